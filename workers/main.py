"""The worker process: every context's command subscriber, registered in one place."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from faststream import FastStream
from faststream.kafka import KafkaBroker

import events  # noqa: F401  (registers every message type)
from workers.actors import ActorCheck
from workers.cancel import CancelWatcher
from workers.eventstore import EventStore, open_factory
from workers.identity.handlers import IdentityDecider
from workers.knowledge.handlers import KnowledgeDecider
from workers.wiring import include_context, with_retry_path

if TYPE_CHECKING:
    from infra.settings import Settings
    from workers.batch import Decider
    from workers.retries import RetryDispatcher

log = logging.getLogger("uait.worker")


def deciders(settings: Settings) -> dict[str, Decider]:
    """Every context's decision logic. Add a context here and in ``events.topics.CONTEXTS``."""
    return {
        "knowledge": KnowledgeDecider(
            max_text_bytes=settings.max_text_bytes,
            chunk_size=settings.chunk_size,
            chunk_overlap=settings.chunk_overlap,
        ),
        "identity": IdentityDecider(),
    }


@dataclass
class Worker:
    broker: KafkaBroker
    app: FastStream
    stores: dict[str, EventStore] = field(default_factory=dict)

    def close(self) -> None:
        for store in self.stores.values():
            store.factory.close()


def build_worker(
    settings: Settings,
    *,
    kafka_bootstrap: str,
    es_env: dict[str, str],
    contexts: list[str] | None = None,
    batch_size: int | None = None,
) -> Worker:
    if batch_size is not None:
        settings = settings.model_copy(update={"worker_batch_size": batch_size})
    # On SIGTERM FastStream stops fetching and waits up to graceful_timeout for the batch in
    # hand; its offsets are committed only if it finished, so nothing acknowledged is lost.
    broker = KafkaBroker(
        kafka_bootstrap,
        client_id="uait-worker",
        graceful_timeout=settings.worker_graceful_timeout_s,
    )
    stores: dict[str, EventStore] = {}
    dispatchers: list[RetryDispatcher] = []
    cancels = CancelWatcher(None)
    actors = ActorCheck(settings) if settings.verify_actors else None
    if actors is None:
        log.warning("UAIT_VERIFY_ACTORS=false: commands' actor tokens are NOT verified")
    for context, decider in deciders(settings).items():
        if contexts and context not in contexts:
            continue
        store = EventStore(
            context,
            open_factory(context, es_env),
            snapshot_every=settings.snapshot_every,
            statement_timeout_ms=settings.append_statement_timeout_ms,
        )
        stores[context] = store
        dispatchers.append(
            include_context(
                broker,
                store,
                decider,
                settings,
                kafka_bootstrap=kafka_bootstrap,
                cancels=cancels,
                actors=actors,
            )
        )
        log.info("worker subscribed to context %s (and its retry topic)", context)
    app = FastStream(broker)
    with_retry_path(app, dispatchers, cancels, settings.redis_url)
    if settings.redis_url:
        _with_pause_control(app, broker, settings.redis_url)
    return Worker(broker=broker, app=app, stores=stores)


def _with_pause_control(app: FastStream, broker: KafkaBroker, redis_url: str) -> None:
    from redis.asyncio import Redis

    from workers.control import PauseControl

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
