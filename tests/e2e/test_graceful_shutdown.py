"""SIGTERM under load: the worker finishes its batch, commits it, leaves the group, exits 0."""

from __future__ import annotations

import signal
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
import pytest

from infra.settings import Settings
from infra.stack import EmbeddedStack, create_database, drop_database
from tests.conftest import with_actor_keys
from tests.e2e.test_crash_recovery import Traffic, held_uncommitted, spawn, wait_until_busy
from uait.processes import prepare

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from infra.stack import Endpoints

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def settings(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    dbname = f"uait_term_{uuid.uuid4().hex[:8]}"
    database_url = create_database(endpoints.database_url, dbname)
    base = with_actor_keys(Settings(database_url=database_url, redis_url=endpoints.redis_url))
    try:
        with EmbeddedStack(base, data_dir=tmp_path_factory.mktemp("term-kafka")) as ep:
            s = base.model_copy(
                update={
                    "kafka_bootstrap": ep.kafka_bootstrap,
                    "worker_session_timeout_ms": 3000,
                    "worker_batch_size": 200,
                }
            )
            prepare(s)
            yield s
    finally:
        drop_database(endpoints.database_url, dbname)


def test_sigterm_under_load_exits_cleanly_and_loses_nothing(settings: Settings, tmp_path: Path):
    log = tmp_path / "processes.log"
    projections = spawn(settings, ["projections", "run"], log)
    worker = spawn(settings, ["worker"], log)
    traffic = Traffic(settings, total=3000, rate=600)
    traffic.start()
    try:
        spawned = datetime.now(UTC)
        wait_until_busy(settings, spawned)
        time.sleep(0.5)  # well into the stream: the worker is busy with batches
        sent = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=settings.worker_graceful_timeout_s + 10)
        shutdown_s = time.monotonic() - sent
        assert code == 0, log.read_text()[-3000:]
        # What it had started, it finished and committed before leaving.
        assert held_uncommitted(settings, spawned) == 0
        print(f"\nshutdown under load: {shutdown_s * 1000:.0f} ms")

        worker = spawn(settings, ["worker"], log)
        traffic.join(timeout=60)
        assert traffic.error is None
        accepted = set(traffic.accepted)
        deadline = time.monotonic() + 120
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            while True:
                row = conn.execute(
                    "SELECT count(*) FROM command_outcomes WHERE command_id = ANY(%s)",
                    (list(accepted),),
                ).fetchone()
                if row and row[0] == len(accepted):
                    break
                assert time.monotonic() < deadline, f"{row}/{len(accepted)} outcomes"
                time.sleep(0.5)
    finally:
        for proc in (worker, projections):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in (worker, projections):
            proc.wait(timeout=30)
