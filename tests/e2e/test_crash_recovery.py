"""SIGKILL the worker while it holds consumed but uncommitted messages; nothing is lost or doubled.

Real processes (worker, projections) on a private Kafka-protocol broker and a fresh database. A
kill counts only when, after the victim died, some record it had started (``command_log``
written at batch start, before the event-store commit) sits at or past its partition's committed
offset: the victim had consumed it and not committed it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.ids import COMMAND_NAMESPACE, command_aggregate_id
from events.knowledge.commands import DeleteDocument, IngestDocument
from events.topics import command_topic
from infra.actors import operator_signer
from infra.eventstore import EventStore, open_factory
from infra.publisher import CommandPublisher, headers_for
from infra.settings import Settings
from infra.stack import EmbeddedStack, create_database, drop_database, eventsourcing_env
from projections.runner import rebuild_into
from tests.conftest import with_actor_keys
from uait.processes import prepare
from workers.subscriber import group_id

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from infra.stack import Endpoints

pytestmark = pytest.mark.e2e

TOPIC = command_topic("knowledge")
WANTED_KILLS = 3


@pytest.fixture(scope="module")
def crash_settings(
    endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    dbname = f"uait_crash_{uuid.uuid4().hex[:8]}"
    database_url = create_database(endpoints.database_url, dbname)
    base = with_actor_keys(Settings(database_url=database_url, redis_url=endpoints.redis_url))
    try:
        with EmbeddedStack(base, data_dir=tmp_path_factory.mktemp("crash-kafka")) as ep:
            s = base.model_copy(
                update={
                    "kafka_bootstrap": ep.kafka_bootstrap,
                    "worker_session_timeout_ms": 3000,
                    "worker_batch_size": 100,
                }
            )
            prepare(s)
            yield s
    finally:
        drop_database(endpoints.database_url, dbname)


def spawn(settings: Settings, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "UAIT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "UAIT_DATABASE_URL": settings.database_url,
        "UAIT_REDIS_URL": settings.redis_url,
        "UAIT_KEY_ENCRYPTION_KEYS": settings.key_encryption_keys.get_secret_value(),
        "UAIT_WORKER_SESSION_TIMEOUT_MS": str(settings.worker_session_timeout_ms),
        "UAIT_WORKER_BATCH_SIZE": str(settings.worker_batch_size),
        "UAIT_LOG_LEVEL": "WARNING",
    }
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "uait", *args], env=env, stdout=out, stderr=out)


class Traffic(threading.Thread):
    """Publishes a mixed workload at a steady pace and remembers every accepted command."""

    def __init__(self, settings: Settings, total: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.total, self.rate = settings.kafka_bootstrap, total, rate
        self.signer = operator_signer(settings)
        self.accepted: list[uuid.UUID] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:
            self.error = exc

    async def _publish(self) -> None:
        rng = random.Random(7)
        docs = [f"crash-{i:05d}" for i in range(self.total // 3)]
        async with CommandPublisher(self.bootstrap, timeout_s=10, signer=self.signer) as publisher:
            start = time.monotonic()
            for i in range(self.total):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                roll = rng.random()
                doc = rng.choice(docs)
                if roll < 0.01:  # poison without an id: the outcome id comes from its offset
                    meta = await publisher.send_raw(TOPIC, b"{broken", doc.encode())
                    key = f"{meta.topic}/{meta.partition}/{meta.offset}"
                    self.accepted.append(uuid.uuid5(COMMAND_NAMESPACE, key))
                    continue
                command: Any
                if roll < 0.10:
                    command = DeleteDocument(document_id=doc)
                else:
                    text = f"version {rng.randint(1, 3)} of {doc}: kafka crash safety"
                    command = IngestDocument(document_id=doc, title=doc, text=text)
                assert self.signer is not None
                token = self.signer("crash-test", command)
                envelope = wrap(command, actor="crash-test", actor_token=token)
                copies = 2 if roll > 0.95 else 1  # duplicates on the topic are normal
                for _ in range(copies):
                    await publisher.send_raw(
                        TOPIC, dumps(envelope), doc.encode(), headers_for(envelope)
                    )
                self.accepted.append(envelope.message_id)


def committed_offsets(settings: Settings) -> dict[int, int]:
    async def fetch() -> dict[int, int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap, group_id=group_id("knowledge")
        )
        await consumer.start()
        try:
            return {
                p: (await consumer.committed(TopicPartition(TOPIC, p))) or 0
                for p in range(settings.command_partitions)
            }
        finally:
            await consumer.stop()

    return asyncio.run(fetch())


def held_uncommitted(settings: Settings, since: datetime) -> int:
    """Records the victim started (since it was spawned) at or past the committed offsets."""
    committed = committed_offsets(settings)
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT kafka_partition, kafka_offset FROM command_log WHERE last_attempt_at >= %s",
            (since,),
        ).fetchall()
    return sum(1 for part, off in rows if off >= committed.get(part, 0))


def wait_until_busy(settings: Settings, since: datetime, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM command_log WHERE last_attempt_at >= %s", (since,)
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.003)
    raise AssertionError("the restarted worker never started a batch")


def table(conn: psycopg.Connection[Any], schema: str, name: str) -> list[tuple[Any, ...]]:
    conn.execute(f'SET search_path TO "{schema}", public')
    return conn.execute(f"SELECT * FROM {name} ORDER BY 1, 2").fetchall()


def test_a_worker_killed_mid_batch_loses_nothing_and_doubles_nothing(crash_settings, tmp_path):
    s = crash_settings
    log = tmp_path / "processes.log"
    projections = spawn(s, ["projections", "run"], log)
    worker = spawn(s, ["worker"], log)
    traffic = Traffic(s, total=4000, rate=400)
    traffic.start()
    kills = attempts = 0
    try:
        while kills < WANTED_KILLS and attempts < 12:
            attempts += 1
            spawned = datetime.now(UTC)
            wait_until_busy(s, spawned)
            time.sleep(random.uniform(0, 0.05))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            if held_uncommitted(s, spawned):
                kills += 1
            worker = spawn(s, ["worker"], log)
        traffic.join(timeout=120)
        assert traffic.error is None, traffic.error
        assert not traffic.is_alive()
        accepted = traffic.accepted
        # Every accepted command reaches its one outcome, in the read model too.
        deadline = time.monotonic() + 180
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            while True:
                try:
                    row = conn.execute(
                        "SELECT count(*) FROM command_outcomes WHERE command_id = ANY(%s)",
                        (accepted,),
                    ).fetchone()
                except psycopg.errors.UndefinedTable:  # projections still starting
                    row = (0,)
                done = row[0] if row else 0
                if done == len(set(accepted)):
                    break
                assert time.monotonic() < deadline, f"{done}/{len(set(accepted))} outcomes"
                time.sleep(0.5)
            time.sleep(1.0)  # let the projection pass the last events
    finally:
        for proc in (worker, projections):
            proc.send_signal(signal.SIGTERM)
        for proc in (worker, projections):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(log.read_text()[-3000:])
    assert kills >= WANTED_KILLS, f"only {kills} of {attempts} kills caught uncommitted messages"

    factory = open_factory("knowledge", eventsourcing_env(s.database_url))
    try:
        store = EventStore("knowledge", factory)
        outcome_streams = store.load_streams([command_aggregate_id(c) for c in set(accepted)])
        lost = sum(1 for c in set(accepted) if not outcome_streams.get(command_aggregate_id(c)))
        extra = sum(len(v) - 1 for v in outcome_streams.values() if len(v) > 1)
        # Nothing doubled: document events match the succeeded commands that changed something.
        with psycopg.connect(s.database_url) as conn:
            changed = conn.execute(
                "SELECT count(*) FROM command_outcomes WHERE status = 'succeeded'"
                " AND detail <> 'unchanged'"
            ).fetchone()
            notes = store.recorder.select_notifications(start=0, limit=10**7)
        kinds = Counter(n.topic for n in notes)
        doc_events = kinds["DocumentIngested"] + kinds["DocumentDeleted"]
        duplicated = extra + abs(doc_events - (changed[0] if changed else 0))
        print(f"lost={lost} duplicated={duplicated} kills={kills}")
        assert (lost, duplicated) == (0, 0)
        assert kinds["CommandSucceeded"] + kinds["CommandRejected"] == len(set(accepted))

        # The read models equal a rebuild from the event store (the knowledge context's: the
        # commands here are all knowledge commands).
        for projection in REGISTRY.projections():
            if projection.context != "knowledge":
                continue
            schema = f"verify_{uuid.uuid4().hex[:8]}"
            rebuild_into(projection, store.recorder, schema)
            with psycopg.connect(s.database_url) as conn:
                for name in projection.tables:
                    live = table(conn, "public", name)
                    rebuilt = table(conn, schema, name)
                    assert live == rebuilt, f"{name} differs from its rebuild"
                    assert live, f"{name} is empty"
    finally:
        factory.close()
