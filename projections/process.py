"""The projection runner process: a runner per projection, each following its context's store
in its own thread; the relay process, a runner per context with public events."""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Protocol

import redis
from eventsourcing.postgres import PostgresApplicationRecorder

from infra.databases import eventsourcing_env
from infra.eventstore import open_factory
from projections.control import read_state, write_state
from projections.rebuild import Rebuilder
from projections.relay import BlockingProducer, EventRelay
from projections.runner import ProjectionRunner

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from eventsourcing.postgres import PostgresFactory

    from infra.settings import Settings
    from projections.base import Projection

log = logging.getLogger("uait")


class CacheFollowers(Protocol):
    """The projections whose view is the cache, on a Redis client and the cache's key prefix."""

    def __call__(self, client: redis.Redis, prefix: str) -> list[Projection]: ...


def projection_runners(
    settings: Settings,
    projections: Sequence[Projection],
    *,
    names: Sequence[str] | None = None,
    setup: bool = True,
) -> tuple[list[ProjectionRunner], list[PostgresFactory]]:
    """A runner for each of ``projections`` (those named in ``names``, when given), and the
    event-store connections they share (one per context: close them when done)."""
    es_env = eventsourcing_env(settings.database_url)
    factories: dict[str, PostgresFactory] = {}
    runners = []
    for projection in projections:
        if names and projection.name not in names:
            continue
        factory = factories.get(projection.context)
        if factory is None:
            factory = factories[projection.context] = open_factory(
                projection.context, es_env, pool_size=2 + len(projections) * 2
            )
        runner = _runner(settings, factory, projection)
        if setup:
            runner.setup()
        runners.append(runner)
    return runners, list(factories.values())


def _runner(
    settings: Settings, factory: PostgresFactory, projection: Projection
) -> ProjectionRunner:
    recorder = factory.application_recorder()
    assert isinstance(recorder, PostgresApplicationRecorder)
    return ProjectionRunner(
        projection, recorder, factory.tracking_recorder(), batch_size=settings.projection_batch_size
    )


def run_projections(
    settings: Settings,
    projections: Sequence[Projection],
    cache_followers: CacheFollowers,
    names: Sequence[str] | None = None,
) -> None:
    """Follow every projection in its own thread until SIGINT/SIGTERM.

    A projection whose code version differs from the version its live tables were built with
    is first rebuilt blue/green (or only flagged, with UAIT_PROJECTIONS_REBUILD_ON_START=false).
    With a Redis and the cache enabled, the projections whose view is the cache
    (``cache_followers``: e.g. the knowledge cache's invalidation) follow the store too.
    """
    runners, factories = projection_runners(settings, projections, names=names)
    redis_client: redis.Redis | None = None
    try:
        for runner in runners:
            check_version(runner, rebuild=settings.projections_rebuild_on_start)
        if settings.redis_url and settings.cache_enabled:
            redis_client = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=max(settings.redis_timeout_s, 1.0),
                socket_connect_timeout=max(settings.redis_timeout_s, 1.0),
            )
            es_env = eventsourcing_env(settings.database_url)
            for follower in cache_followers(redis_client, settings.cache_prefix):
                if names and follower.name not in names:
                    continue
                factory = open_factory(follower.context, es_env, pool_size=3)
                factories.append(factory)
                runners.append(_runner(settings, factory, follower))
        follow(runners)
    finally:
        for f in factories:
            f.close()
        if redis_client is not None:
            redis_client.close()


def run_relay(settings: Settings, relays: Callable[[BlockingProducer], list[EventRelay]]) -> None:
    """Relay public events to ``uait.events.<context>`` until SIGINT/SIGTERM: one relay per
    context that has public events (``relays``, given the producer they share)."""
    producer = BlockingProducer(settings.kafka_bootstrap, timeout_s=settings.publish_timeout_s * 6)
    es_env = eventsourcing_env(settings.database_url)
    factories = []
    try:
        runners = []
        for relay in relays(producer):
            factory = open_factory(relay.context, es_env, pool_size=3)
            factories.append(factory)
            runners.append(_runner(settings, factory, relay))
        follow(runners)
    finally:
        producer.close()
        for factory in factories:
            factory.close()


def check_version(runner: ProjectionRunner, *, rebuild: bool) -> None:
    projection = runner.projection
    state = read_state(runner.datastore, projection.name)
    if state.live_version is None:
        with runner.datastore.transaction(commit=True) as cur:
            write_state(cur, projection.name, live_version=projection.version)
        return
    if state.live_version == projection.version:
        return
    if not rebuild:
        log.warning(
            "%s: live tables are version %d, the code is version %d; run "
            "`uait projections rebuild %s`",
            projection.name,
            state.live_version,
            projection.version,
            projection.name,
        )
        return
    log.info(
        "%s: code version %d != live %d: rebuilding blue/green before following",
        projection.name,
        projection.version,
        state.live_version,
    )
    result = Rebuilder(projection, runner.recorder, runner.tracking).rebuild()
    if result is not None:
        log.info("%s: rebuilt %d events at %.0f/s", projection.name, result.events, result.rate)


STOP_DEADLINE_S = 10.0
"""How long the runners, together, get to finish their batch once asked to stop."""


def follow(runners: list[ProjectionRunner]) -> None:
    """Run each runner in its own thread until SIGINT/SIGTERM; then give them, all together,
    ``STOP_DEADLINE_S`` to finish their batch (each commits or rolls back as a whole, so one
    cut short is applied again at the next start)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("projections: stopping on signal %d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [
        threading.Thread(target=r.run_forever, args=(stop,), name=r.projection.name, daemon=True)
        for r in runners
    ]
    for t in threads:
        t.start()
    log.info("projections running: %s", ", ".join(r.projection.name for r in runners))
    while not stop.is_set():
        stop.wait(0.5)
    deadline = time.monotonic() + STOP_DEADLINE_S
    for t in threads:
        t.join(timeout=max(deadline - time.monotonic(), 0))
    late = [t.name for t in threads if t.is_alive()]
    if late:
        log.warning("projections: %s still busy after %.0f s; exiting", late, STOP_DEADLINE_S)
