"""The composition root: start-up steps shared by every process (migrations, topics, tables)."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import TYPE_CHECKING

import redis
from eventsourcing.postgres import PostgresApplicationRecorder

from infra.migrate import migrate
from infra.stack import eventsourcing_env
from infra.topics import ensure_topics, topic_specs
from projections.cache_invalidation import CacheInvalidation
from projections.control import read_state, write_state
from projections.rebuild import Rebuilder
from projections.registry import all_projections
from projections.relay import BlockingProducer, EventRelay
from projections.runner import ProjectionRunner
from workers.eventstore import open_factory

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresFactory

    from infra.settings import Settings

log = logging.getLogger("uait")


def require_endpoints(settings: Settings) -> None:
    missing = [
        name
        for name, value in (
            ("UAIT_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
            ("UAIT_DATABASE_URL", settings.database_url),
        )
        if not value
    ]
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} not set: run `uait dev` for the embedded stack, "
            "or point these settings at your services"
        )


def prepare(settings: Settings, *, need_kafka: bool = True) -> None:
    """Apply migrations and provision topics (both idempotent; every process runs them).

    The ingress passes ``need_kafka=False``: it must start, and answer queries and 503s, while
    the broker is down.
    """
    migrate(settings.database_url)
    try:
        asyncio.run(
            ensure_topics(
                settings.kafka_bootstrap,
                topic_specs(settings),
                replication_factor=settings.replication_factor,
                timeout_s=10 if need_kafka else 3,
            )
        )
    except Exception as exc:
        if need_kafka:
            raise
        log.warning("could not provision topics (%s); continuing without Kafka", exc)


def ensure_signing_key(settings: Settings) -> None:
    """Create the first JWT signing key when there is none (once, under a lock)."""
    import psycopg

    from security.keyring import Keyring
    from security.keystore import ensure_key

    value = settings.key_encryption_keys.get_secret_value()
    if not value:
        raise SystemExit(
            "UAIT_KEY_ENCRYPTION_KEYS is not set: `uait secrets generate` prints values for it and"
            " UAIT_IDENTITY_PEPPER (`uait dev` keeps its own)"
        )
    with psycopg.connect(settings.database_url) as conn:
        ensure_key(conn, Keyring.from_setting(value), alg=settings.jwt_algorithm)


def projection_runners(
    settings: Settings, *, names: list[str] | None = None, setup: bool = True
) -> tuple[list[ProjectionRunner], list[PostgresFactory]]:
    es_env = eventsourcing_env(settings.database_url)
    factories: dict[str, PostgresFactory] = {}
    runners = []
    for projection in all_projections():
        if names and projection.name not in names:
            continue
        factory = factories.get(projection.context)
        if factory is None:
            factory = factories[projection.context] = open_factory(
                projection.context, es_env, pool_size=2 + len(all_projections()) * 2
            )
        recorder = factory.application_recorder()
        assert isinstance(recorder, PostgresApplicationRecorder)
        runner = ProjectionRunner(
            projection,
            recorder,
            factory.tracking_recorder(),
            batch_size=settings.projection_batch_size,
        )
        if setup:
            runner.setup()
        runners.append(runner)
    return runners, list(factories.values())


def run_projections(settings: Settings, names: list[str] | None = None) -> None:
    """Follow every projection in its own thread until SIGINT/SIGTERM.

    A projection whose code version differs from the version its live tables were built with
    is first rebuilt blue/green (or only flagged, with UAIT_PROJECTIONS_REBUILD_ON_START=false).
    With a Redis and the cache enabled, the cache invalidation follows the documents too.
    """
    runners, factories = projection_runners(settings, names=names)
    redis_client: redis.Redis | None = None
    try:
        for runner in runners:
            check_version(runner, rebuild=settings.projections_rebuild_on_start)
        wanted = not names or CacheInvalidation.name in names
        if settings.redis_url and settings.cache_enabled and wanted:
            redis_client = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=max(settings.redis_timeout_s, 1.0),
                socket_connect_timeout=max(settings.redis_timeout_s, 1.0),
            )
            es_env = eventsourcing_env(settings.database_url)
            factory = open_factory(CacheInvalidation.context, es_env, pool_size=3)
            factories.append(factory)
            recorder = factory.application_recorder()
            assert isinstance(recorder, PostgresApplicationRecorder)
            runners.append(
                ProjectionRunner(
                    CacheInvalidation(redis_client, settings.cache_prefix),
                    recorder,
                    factory.tracking_recorder(),
                    batch_size=settings.projection_batch_size,
                )
            )
        follow(runners)
    finally:
        for f in factories:
            f.close()
        if redis_client is not None:
            redis_client.close()


def run_relay(settings: Settings) -> None:
    """Relay public events to ``uait.events.<context>`` until SIGINT/SIGTERM."""
    factory = open_factory("knowledge", eventsourcing_env(settings.database_url), pool_size=3)
    producer = BlockingProducer(settings.kafka_bootstrap, timeout_s=settings.publish_timeout_s * 6)
    try:
        recorder = factory.application_recorder()
        assert isinstance(recorder, PostgresApplicationRecorder)
        runner = ProjectionRunner(
            EventRelay(producer),
            recorder,
            factory.tracking_recorder(),
            batch_size=settings.projection_batch_size,
        )
        follow([runner])
    finally:
        producer.close()
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


def follow(runners: list[ProjectionRunner]) -> None:
    """Run each runner in its own thread until SIGINT/SIGTERM."""
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
    for t in threads:
        t.join(timeout=10)
