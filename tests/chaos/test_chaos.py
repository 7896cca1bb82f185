"""Two workers in one group over 4 partitions, SIGKILLed at random moments, lose nothing.

20,000 commands (ingests, deletes, 1 % malformed records, 5 % duplicated on the topic) are
published at a pace that keeps both workers busy. A worker is killed at a random moment at
least 10 times, and restarted; a kill counts only when the victim held consumed but
uncommitted records: it had started them (``command_log``, written at batch start) on a
partition it held (its consumer-lag series, scraped just before the kill) at or past that
partition's committed offset. Afterwards every accepted command has exactly one outcome, the
event store has no duplicate effects, and every read model equals a rebuild from the store.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

from contexts import REGISTRY
from events.ids import command_aggregate_id
from infra.eventstore import EventStore, open_factory
from infra.settings import Settings
from infra.stack import EmbeddedStack, create_database, drop_database, eventsourcing_env
from projections.runner import rebuild_into
from tests.conftest import with_actor_keys
from tests.e2e.fixtures import free_port
from tests.e2e.test_crash_recovery import Traffic, committed_offsets, spawn, table
from uait.processes import prepare

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from infra.stack import Endpoints

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(1200)]

COMMANDS = 20_000
RATE = 110  # commands/s: 182 s of traffic; each kill's rebalance leaves a backlog to work off
WANTED_KILLS = 10
_PARTITION = re.compile(r'partition="(\d+)"')


def held_partitions(metrics: str) -> set[int]:
    """The command-topic partitions a worker reports lag for: the ones it holds."""
    return {
        int(m.group(1))
        for line in metrics.splitlines()
        if line.startswith("uait_kafka_consumer_lag{")
        and 'topic="uait.commands.knowledge"' in line
        and (m := _PARTITION.search(line))
    }


@pytest.fixture(scope="module")
def chaos_settings(
    endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    dbname = f"uait_chaos_{uuid.uuid4().hex[:8]}"
    database_url = create_database(endpoints.database_url, dbname)
    base = with_actor_keys(Settings(database_url=database_url, redis_url=endpoints.redis_url))
    try:
        with EmbeddedStack(base, data_dir=tmp_path_factory.mktemp("chaos-kafka")) as ep:
            s = base.model_copy(
                update={
                    "kafka_bootstrap": ep.kafka_bootstrap,
                    "worker_session_timeout_ms": 3000,
                    "worker_batch_size": 100,
                    "command_partitions": 4,
                }
            )
            prepare(s)
            yield s
    finally:
        drop_database(endpoints.database_url, dbname)


class WorkerProcess:
    """``uait worker`` with its own metrics port, so its partitions can be read before a kill."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings, self.log = settings, log
        self.start()

    def start(self) -> None:
        self.port = free_port()
        self.spawned = datetime.now(UTC)
        extra = {"UAIT_WORKER_METRICS_PORT": str(self.port)}
        self.process = spawn_with(self.settings, ["worker"], self.log, extra)

    def partitions(self) -> set[int]:
        try:
            text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=2).text
        except httpx.HTTPError:
            return set()
        return held_partitions(text)


def spawn_with(
    settings: Settings, args: list[str], log: Path, extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Like the crash test's ``spawn``, with extra environment variables."""
    env = {
        **os.environ,
        "UAIT_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "UAIT_DATABASE_URL": settings.database_url,
        "UAIT_REDIS_URL": settings.redis_url,
        "UAIT_KEY_ENCRYPTION_KEYS": settings.key_encryption_keys.get_secret_value(),
        "UAIT_WORKER_SESSION_TIMEOUT_MS": str(settings.worker_session_timeout_ms),
        "UAIT_WORKER_BATCH_SIZE": str(settings.worker_batch_size),
        "UAIT_LOG_LEVEL": "WARNING",
        **extra,
    }
    out = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "uait", *args], env=env, stdout=out, stderr=out)


def started_since_spawn(settings: Settings, victim: WorkerProcess, partitions: set[int]) -> int:
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM command_log WHERE last_attempt_at >= %s"
            " AND kafka_partition = ANY(%s)",
            (victim.spawned, sorted(partitions)),
        ).fetchone()
    return int(row[0]) if row else 0


def first_busy(
    settings: Settings, workers: list[WorkerProcess], rng: random.Random, timeout_s: float = 30
) -> WorkerProcess | None:
    """A worker that has started a batch on partitions it holds (the first found, in a random
    order each round), or None when none did within the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in rng.sample(workers, len(workers)):
            partitions = worker.partitions()
            if partitions and started_since_spawn(settings, worker, partitions):
                return worker
        time.sleep(0.01)
    return None


def held_uncommitted(settings: Settings, victim: WorkerProcess, partitions: set[int]) -> int:
    """Records the victim started on its partitions at or past their committed offsets."""
    committed = committed_offsets(settings)
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute(
            "SELECT kafka_partition, kafka_offset FROM command_log"
            " WHERE last_attempt_at >= %s AND kafka_partition = ANY(%s)",
            (victim.spawned, sorted(partitions)),
        ).fetchall()
    return sum(1 for part, off in rows if off >= committed.get(part, 0))


def test_two_workers_killed_at_random_lose_nothing_and_double_nothing(chaos_settings, tmp_path):
    s = chaos_settings
    log = tmp_path / "processes.log"
    rng = random.Random()
    projections = spawn(s, ["projections", "run"], log)
    workers = [WorkerProcess(s, log), WorkerProcess(s, log)]
    traffic = Traffic(s, total=COMMANDS, rate=RATE)
    traffic.start()
    kills = attempts = 0
    try:
        while kills < WANTED_KILLS and attempts < 80 and traffic.is_alive():
            attempts += 1
            victim = first_busy(s, workers, rng)
            if victim is None:
                continue
            time.sleep(rng.uniform(0, 0.05))  # a random moment while it works
            partitions = victim.partitions()
            victim.process.send_signal(signal.SIGKILL)
            victim.process.wait()
            if partitions and held_uncommitted(s, victim, partitions):
                kills += 1
            victim.start()
        traffic.join(timeout=300)
        assert traffic.error is None, traffic.error
        assert not traffic.is_alive()
        accepted = set(traffic.accepted)
        deadline = time.monotonic() + 300
        with psycopg.connect(s.database_url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM command_outcomes WHERE command_id = ANY(%s)",
                    (list(accepted),),
                ).fetchone()
                done = row[0] if row else 0
                if done == len(accepted):
                    break
                assert time.monotonic() < deadline, f"{done}/{len(accepted)} outcomes"
                time.sleep(0.5)
            time.sleep(1.0)  # let the projections pass the last events
    finally:
        for proc in (*(w.process for w in workers), projections):
            proc.send_signal(signal.SIGTERM)
        for proc in (*(w.process for w in workers), projections):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert kills >= WANTED_KILLS, f"only {kills} of {attempts} kills caught uncommitted records"

    factory = open_factory("knowledge", eventsourcing_env(s.database_url))
    try:
        store = EventStore("knowledge", factory)
        streams = store.load_streams([command_aggregate_id(c) for c in accepted])
        lost = sum(1 for c in accepted if not streams.get(command_aggregate_id(c)))
        extra = sum(len(v) - 1 for v in streams.values() if len(v) > 1)
        with psycopg.connect(s.database_url) as conn:
            changed = conn.execute(
                "SELECT count(*) FROM command_outcomes WHERE status = 'succeeded'"
                " AND detail <> 'unchanged'"
            ).fetchone()
        notes = store.recorder.select_notifications(start=0, limit=10**7)
        kinds = Counter(n.topic for n in notes)
        doc_events = kinds["DocumentIngested"] + kinds["DocumentDeleted"]
        duplicated = extra + abs(doc_events - (changed[0] if changed else 0))
        print(f"kill attempts: {attempts}")
        print(f"lost={lost} duplicated={duplicated} kills={kills}")
        assert (lost, duplicated) == (0, 0)
        assert kinds["CommandSucceeded"] + kinds["CommandRejected"] == len(accepted)
        # Every read model of the knowledge context (the commands here are all knowledge's).
        for projection in REGISTRY.projections():
            if projection.context != "knowledge":
                continue
            schema = f"verify_{uuid.uuid4().hex[:8]}"
            rebuild_into(projection, store.recorder, schema)
            with psycopg.connect(s.database_url) as conn:
                for name in projection.tables:
                    live: list[Any] = table(conn, "public", name)
                    assert live == table(conn, schema, name), f"{name} differs from its rebuild"
                    assert live, f"{name} is empty"
    finally:
        factory.close()
