"""``uait bench pipeline``: publish -> Kafka -> worker -> event store -> projection -> read model.

Each run gets a fresh embedded stack (Tansu + PostgreSQL) and real worker and projection
processes, as in production. Three runs and a yardstick, in one invocation:

1. throughput with the configured batch sizes: N small documents published straight to Kafka,
   timed from the first publish to the projection commit that makes the last row visible;
2. the same code with worker batch size 1 (one command per event-store transaction; the
   projection keeps its batching) on a smaller sample, for the ratio;
3. a paced run (default 500 commands/s) for publish -> read-model latency percentiles, taken
   from the projection's own commit notifications;
4. the machine's own baseline: plain batched INSERTs into a fresh PostgreSQL, so that figures
   from different days (the machine is shared) compare through their ratio to it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from aiokafka import AIOKafkaProducer
from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.knowledge.commands import IngestDocument
from events.topics import command_topic
from infra.actors import operator_signer
from infra.publisher import headers_for
from infra.settings import Settings
from infra.stack import EmbeddedStack
from infra.startup import prepare
from projections.knowledge.documents import DocumentsProjection
from projections.runner import POSITIONS_CHANNEL
from security.keyring import Keyring

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from events.base import Command
    from infra.stack import Endpoints

console = Console()

WORDS = [
    "kafka",
    "partition",
    "offset",
    "event",
    "store",
    "projection",
    "replay",
    "snapshot",
    "aggregate",
    "command",
    "worker",
    "ingress",
    "cache",
    "vector",
    "search",
    "chunk",
    "embed",
    "rerank",
    "agent",
    "planner",
    "retrieval",
    "inference",
    "model",
    "latency",
    "throughput",
    "batch",
    "transaction",
    "commit",
    "durable",
    "ordered",
    "idempotent",
    "outcome",
]


def document(i: int) -> IngestDocument:
    words = [WORDS[(i * 7 + k * 13) % len(WORDS)] for k in range(24)]
    return IngestDocument(
        document_id=f"bench-{i:07d}",
        title=f"Bench document {i}",
        text=" ".join(words) + f". Unique marker m{i}.",
        source="bench",
        tags=["bench"],
    )


@dataclass
class RunResult:
    label: str
    commands: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.commands / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CommitLog(threading.Thread):
    """Receives the documents projection's commit notifications: (perf_counter, position)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True, name="commit-log")
        self.database_url = database_url
        self.times: list[float] = []
        self.positions: list[int] = []
        self.ready = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        prefix = f"{DocumentsProjection.name}:"
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            conn.execute(f"LISTEN {POSITIONS_CHANNEL}")
            self.ready.set()
            while not self._halt.is_set():
                for note in conn.notifies(timeout=0.2):
                    if note.payload.startswith(prefix):
                        self.times.append(time.perf_counter())
                        self.positions.append(int(note.payload[len(prefix) :]))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def visible_at(self, position: int) -> float:
        """When the first commit at or past ``position`` was announced."""
        i = bisect.bisect_left(self.positions, position)
        if i == len(self.positions):
            raise LookupError(f"position {position} was never announced")
        return self.times[i]


# One key-encryption key per benchmark process: the workers it starts verify actor tokens.
KEK = Keyring.generate_setting()


@contextlib.contextmanager
def fresh_stack(log_dir: Path) -> Iterator[Endpoints]:
    with tempfile.TemporaryDirectory(prefix="uait-bench-") as tmp:
        # Every run starts from an empty embedded broker and database.
        settings = Settings(kafka_bootstrap="", database_url="", redis_url="")
        with EmbeddedStack(settings, data_dir=Path(tmp)) as endpoints:
            yield endpoints


@contextlib.contextmanager
def pipeline(endpoints: Endpoints, batch: int | None, log_dir: Path) -> Iterator[None]:
    env = {
        **os.environ,
        "UAIT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "UAIT_DATABASE_URL": endpoints.database_url,
        "UAIT_REDIS_URL": endpoints.redis_url,
        "UAIT_KEY_ENCRYPTION_KEYS": KEK,
        "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000",
        "UAIT_LOG_LEVEL": "WARNING",
        # The command path alone: with the embedder, ingestion is bound by it (its own figure
        # is `uait bench embed`'s), and both builds compared here must do the same work.
        "UAIT_EMBEDDER": "none",
    }
    if batch is not None:
        # Only the write path changes: the projection keeps its batching in both runs, so the
        # ratio is the worker's batching alone.
        env["UAIT_WORKER_BATCH_SIZE"] = str(batch)
    exe = [sys.executable, "-m", "uait"]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in (("worker", ["worker"]), ("projections", ["projections", "run"])):
            out = (log_dir / f"{name}-{batch or 'default'}.log").open("wb")
            procs.append(subprocess.Popen([*exe, *args], env=env, stdout=out, stderr=out))
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


async def publish(
    bootstrap: str,
    commands: list[IngestDocument],
    rate: float | None,
    sign: Callable[[str, Command], str],
) -> list[float]:
    """Send every command (acks=all); returns each command's send time (perf_counter)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
    )
    await producer.start()
    topic = command_topic("knowledge")
    sent: list[float] = []
    pending = []
    try:
        start = time.perf_counter()
        for i, command in enumerate(commands):
            if rate:
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            envelope = wrap(command, actor="bench", actor_token=sign("bench", command))
            sent.append(time.perf_counter())
            pending.append(
                await producer.send(
                    topic,
                    dumps(envelope),
                    key=command.document_id.encode(),
                    headers=headers_for(envelope),
                )
            )
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def count_rows(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        try:
            row = conn.execute("SELECT count(*) FROM documents").fetchone()
        except psycopg.errors.UndefinedTable:  # the projection process is still starting
            return 0
        return int(row[0]) if row else 0


def wait_for_rows(database_url: str, want: int, label: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:>8.0f}/s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=want, rate=0.0)
        started = time.perf_counter()
        while True:
            have = count_rows(database_url)
            elapsed = time.perf_counter() - started
            progress.update(task, completed=have, rate=have / elapsed if elapsed else 0.0)
            if have >= want:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: {have}/{want} rows after {timeout_s:.0f} s")
            time.sleep(0.25)


def run(
    label: str, n: int, batch: int | None, log_dir: Path, *, rate: float | None = None
) -> RunResult:
    with fresh_stack(log_dir) as endpoints:
        settings = Settings(
            kafka_bootstrap=endpoints.kafka_bootstrap,
            database_url=endpoints.database_url,
            redis_url=endpoints.redis_url,
            # The workers verify every command's actor token, as in production.
            key_encryption_keys=SecretStr(KEK),
        )
        prepare(settings, REGISTRY.topic_specs(settings))
        with pipeline(endpoints, batch, log_dir):
            commits = CommitLog(endpoints.database_url)
            commits.start()
            commits.ready.wait(10)
            try:
                # Warm-up: the worker has joined its group and the projection is following.
                sign = operator_signer(settings)
                assert sign is not None
                asyncio.run(publish(endpoints.kafka_bootstrap, [document(-1)], None, sign))
                wait_for_rows(endpoints.database_url, 1, f"{label}: warm-up", 120)
                commands = [document(i) for i in range(n)]
                sent = asyncio.run(publish(endpoints.kafka_bootstrap, commands, rate, sign))
                wait_for_rows(endpoints.database_url, n + 1, label, 60 + n / 50)
                time.sleep(0.3)  # let the last notification arrive
                with psycopg.connect(endpoints.database_url) as conn:
                    rows: dict[str, int] = dict(
                        conn.execute(
                            "SELECT document_id, position FROM documents"
                            " WHERE document_id LIKE 'bench-0%%'"
                        ).fetchall()
                    )
            finally:
                commits.stop()
    visible = [commits.visible_at(rows[c.document_id]) for c in commands]
    result = RunResult(label, n, max(visible) - sent[0])
    if rate:
        result.latencies_ms = [(v - s) * 1000 for v, s in zip(visible, sent, strict=True)]
    return result


BASELINE_SECONDS = 5.0
BASELINE_BATCH = 500


def machine_baseline(log_dir: Path, seconds: float = BASELINE_SECONDS) -> float:
    """This machine's own yardstick: rows/s of plain batched INSERTs into PostgreSQL.

    The rows are shaped like the pipeline's events (a uuid, a version, a type, ~600 bytes of
    state) and go 500 to a transaction, one statement each, on a fresh embedded database: what
    the store could take with no broker, no decisions and no projections. Figures from
    different days compare through their ratio to it.
    """
    state = os.urandom(300).hex().encode()
    with fresh_stack(log_dir) as endpoints, psycopg.connect(endpoints.database_url) as conn:
        conn.execute(
            "CREATE TABLE baseline (id bigserial PRIMARY KEY, originator_id uuid NOT NULL,"
            " originator_version bigint NOT NULL, topic text NOT NULL, state bytea NOT NULL,"
            " UNIQUE (originator_id, originator_version))"
        )
        conn.commit()
        rows = 0
        started = time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            ids = [uuid.uuid4() for _ in range(BASELINE_BATCH)]
            with conn.transaction():
                conn.execute(
                    "INSERT INTO baseline (originator_id, originator_version, topic, state)"
                    " SELECT id, 1, 'DocumentIngested', %s FROM unnest(%s::uuid[]) AS t(id)",
                    (state, ids),
                )
            rows += BASELINE_BATCH
        return rows / elapsed


def main(*, commands: int, baseline_commands: int, paced_rate: int, paced_seconds: int) -> None:
    defaults = Settings(kafka_bootstrap="x", database_url="x")
    with tempfile.TemporaryDirectory(prefix="uait-bench-logs-") as logs:
        log_dir = Path(logs)
        batched = run(f"batched ({defaults.worker_batch_size}/txn)", commands, None, log_dir)
        console.print(
            f"batched: {batched.commands} commands in {batched.seconds:.2f} s = "
            f"[bold]{batched.rate:,.0f} commands/s[/bold] (worker batch "
            f"{defaults.worker_batch_size}, projection batch {defaults.projection_batch_size})"
        )
        single = run("one per transaction", baseline_commands, 1, log_dir)
        console.print(
            f"one per transaction: {single.commands} commands in {single.seconds:.2f} s = "
            f"[bold]{single.rate:,.0f} commands/s[/bold] (worker batch 1, same projection)"
        )
        ratio = batched.rate / single.rate
        console.print(f"ratio: {ratio:.1f}x")
        paced = run(
            f"paced {paced_rate}/s", paced_rate * paced_seconds, None, log_dir, rate=paced_rate
        )
        p50, p99 = paced.percentile(0.50), paced.percentile(0.99)
        console.print(
            f"paced {paced_rate}/s for {paced_seconds} s: publish -> read model "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(paced.latencies_ms):.1f} ms"
        )
        baseline = machine_baseline(log_dir)
        console.print(
            f"machine baseline: {baseline:,.0f} rows/s of batched INSERTs into PostgreSQL "
            f"({BASELINE_BATCH}/txn); the pipeline is at {batched.rate / baseline:.2f} of it"
        )
    summary = f"{batched.rate:.0f} commands/s, p99 {p99:.0f} ms"
    tail = f"{ratio:.1f}x over one-per-transaction; baseline {baseline:.0f} rows/s"
    print(f"pipeline: {summary}, {tail}")
