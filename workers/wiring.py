"""How one context's processing is put together: the command and retry subscribers, the retry
path (dispatcher, parking, job policies) and cancellations. Used by the worker process, and by
tests and benchmarks that run a context with their own decider.
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

from workers.batch import BatchProcessor, RunIntake
from workers.command_log import mark_started
from workers.jobs import Policies
from workers.parking import Parking
from workers.retries import RetryDispatcher
from workers.retry import retry_router
from workers.subscriber import command_router

if TYPE_CHECKING:
    from collections.abc import Callable

    from faststream import FastStream
    from faststream.kafka import KafkaBroker

    from events.base import Command
    from events.envelope import Envelope
    from infra.cancel import CancelWatcher
    from infra.settings import Settings
    from workers.aggregate_store import AggregateStore
    from workers.decisions import Decider


def include_context(
    broker: KafkaBroker,
    store: AggregateStore,
    decider: Decider,
    settings: Settings,
    *,
    kafka_bootstrap: str,
    cancels: CancelWatcher,
    actors: Callable[[Envelope, Command], None] | None = None,
    runs: RunIntake | None = None,
) -> RetryDispatcher:
    """Subscribe ``broker`` to a context's command topic and its retry topic."""
    context = store.context
    parking = Parking(store)
    processor = BatchProcessor(
        store,
        decider,
        on_started=functools.partial(mark_started, store.datastore, context),
        parking=parking,
        policies=Policies(settings),
        is_cancelled=cancels.is_cancelled,
        actors=actors,
        runs=runs,
    )
    dispatcher = RetryDispatcher(
        context,
        kafka_bootstrap,
        store,
        parking,
        max_message_bytes=settings.kafka_max_message_bytes,
    )
    for router in (command_router, retry_router):
        broker.include_router(
            router(context, processor, settings, dispatcher=dispatcher, cancels=cancels)
        )
    return dispatcher


async def start_retry_path(
    dispatchers: list[RetryDispatcher], cancels: CancelWatcher, redis_url: str
) -> list[asyncio.Task[None]]:
    """Start the retry/DLQ producers, and follow cancellations when there is a Redis."""
    for dispatcher in dispatchers:
        await dispatcher.start()
    # One index for every context: one process-wide watcher of its size.
    contexts = [d.context for d in dispatchers]
    tasks = [
        asyncio.create_task(d.watch_dlq_size(contexts), name="dlq-size") for d in dispatchers[:1]
    ]
    if not redis_url:
        return tasks
    from redis.asyncio import Redis

    # No read timeout: the cancellation channel is quiet most of the time.
    cancels.redis = Redis.from_url(redis_url, socket_connect_timeout=1)
    return [*tasks, asyncio.create_task(cancels.run(), name="cancellations")]


async def stop_retry_path(
    dispatchers: list[RetryDispatcher], tasks: list[asyncio.Task[None]]
) -> None:
    for task in tasks:
        task.cancel()
    for dispatcher in dispatchers:
        await dispatcher.stop()


def with_retry_path(
    app: FastStream, dispatchers: list[RetryDispatcher], cancels: CancelWatcher, redis_url: str
) -> None:
    tasks: list[asyncio.Task[None]] = []

    @app.on_startup
    async def _start() -> None:
        tasks.extend(await start_retry_path(dispatchers, cancels, redis_url))

    @app.after_shutdown
    async def _stop() -> None:
        await stop_retry_path(dispatchers, tasks)
