"""The worker process: every context's command subscriber, registered in one place."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from faststream import FastStream
from faststream.kafka import KafkaBroker

from infra.cancel import CancelWatcher
from infra.eventstore import open_factory
from workers.actors import ActorCheck
from workers.aggregate_store import AggregateStore
from workers.runs import RunSupervisor
from workers.wiring import include_context, with_retry_path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from infra.settings import Settings
    from workers.plugins import WorkerContext
    from workers.retries import RetryDispatcher

log = logging.getLogger("uait.worker")


@dataclass
class Worker:
    broker: KafkaBroker
    app: FastStream
    stores: dict[str, AggregateStore] = field(default_factory=dict)
    supervisors: list[RunSupervisor] = field(default_factory=list)

    def close(self) -> None:
        for store in self.stores.values():
            store.factory.close()


def build_worker(
    settings: Settings,
    contexts: Sequence[WorkerContext],
    *,
    kafka_bootstrap: str,
    es_env: dict[str, str],
    only: Sequence[str] | None = None,
    batch_size: int | None = None,
) -> Worker:
    """A worker for ``contexts`` (those named in ``only``, when given)."""
    if batch_size is not None:
        settings = settings.model_copy(update={"worker_batch_size": batch_size})
    # On SIGTERM FastStream stops fetching and waits up to graceful_timeout for the batch in
    # hand; its offsets are committed only if it finished, so nothing acknowledged is lost.
    broker = KafkaBroker(
        kafka_bootstrap,
        client_id="uait-worker",
        graceful_timeout=settings.worker_graceful_timeout_s,
    )
    stores: dict[str, AggregateStore] = {}
    dispatchers: list[RetryDispatcher] = []
    cancels = CancelWatcher(None)
    actors = ActorCheck(settings) if settings.verify_actors else None
    if actors is None:
        log.warning("UAIT_VERIFY_ACTORS=false: commands' actor tokens are NOT verified")
    supervisors: list[RunSupervisor] = []
    for plugin in contexts:
        context = plugin.name
        if only and context not in only:
            continue
        decider = plugin.decider(settings)
        store = AggregateStore(
            context,
            open_factory(context, es_env),
            snapshot_every=settings.snapshot_every,
            statement_timeout_ms=settings.append_statement_timeout_ms,
        )
        stores[context] = store
        supervisor = None
        if plugin.runs is not None:
            supervisor = RunSupervisor(
                store,
                plugin.runs(settings),
                cancels=cancels,
                streams=None,  # set at start-up, on the process's Redis client
                lease_s=settings.run_lease_s,
                poll_s=settings.run_poll_s,
                concurrency=settings.run_concurrency,
                handover_s=settings.run_handover_s,
            )
            supervisors.append(supervisor)
        # A context with long-running commands is interactive: a client waits for each of its
        # few commands, so its topics are polled without the batch wait of the others.
        own = (
            settings
            if plugin.runs is None
            else settings.model_copy(
                update={
                    "worker_batch_timeout_ms": settings.run_batch_timeout_ms,
                    "worker_fetch_max_wait_ms": settings.run_fetch_max_wait_ms,
                }
            )
        )
        dispatchers.append(
            include_context(
                broker,
                store,
                decider,
                own,
                kafka_bootstrap=kafka_bootstrap,
                cancels=cancels,
                actors=actors,
                runs=supervisor,
            )
        )
        log.info("worker subscribed to context %s (and its retry topic)", context)
    app = FastStream(broker)
    with_retry_path(app, dispatchers, cancels, settings.redis_url)
    if settings.redis_url:
        _with_pause_control(app, broker, settings.redis_url)
    if supervisors:
        _with_runs(app, supervisors, settings)
    return Worker(broker=broker, app=app, stores=stores, supervisors=supervisors)


def _with_runs(app: FastStream, supervisors: list[RunSupervisor], settings: Settings) -> None:
    @app.after_startup
    async def start_runs() -> None:
        if settings.redis_url:
            from redis.asyncio import Redis

            from infra.runstreams import RunStreams

            redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=1)
            streams = RunStreams(redis, ttl_s=settings.run_stream_ttl_s)
            for supervisor in supervisors:
                supervisor.streams = streams
        for supervisor in supervisors:
            await supervisor.start()

    @app.on_shutdown
    async def stop_runs() -> None:
        await asyncio.gather(*(s.stop() for s in supervisors))


def _with_pause_control(app: FastStream, broker: KafkaBroker, redis_url: str) -> None:
    from redis.asyncio import Redis

    from infra.control import PauseControl

    tasks: list[asyncio.Task[None]] = []

    @app.after_startup
    async def start_pause_control() -> None:
        redis = Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1)
        control = PauseControl(redis, list(broker.subscribers))
        tasks.append(asyncio.create_task(control.run(), name="pause-control"))

    @app.on_shutdown
    async def stop_pause_control() -> None:
        for task in tasks:
            task.cancel()
