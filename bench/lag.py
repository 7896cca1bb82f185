"""``uait bench lag``: the time from an event's commit to its read-model row, at a paced rate.

A fresh embedded PostgreSQL, the real ``uait projections run`` process following the store, and
an appender writing documents and their command outcomes straight to the event store at a paced
rate (default 500 events/s, one append every 10 ms, as a worker's batches would). For each
event of a projection:

- its commit time is its append's row in ``event_commit_times`` (``clock_timestamp()`` taken in
  the append transaction, under the table lock, just before the commit);
- its row's arrival is the commit of the projection transaction that wrote it, seen as that
  transaction's NOTIFY on ``uait_projections`` (``name:position``, delivered at commit).

Both clocks are this machine's. Prints p50/p99/max per projection and over all events.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from eventsourcing.persistence import StoredEvent
from rich.console import Console

from contexts import REGISTRY
from events.ids import command_aggregate_id, document_aggregate_id, uuid7
from events.knowledge.events import ChunkSpan, DocumentIngested
from events.outcomes import CommandSucceeded
from events.stored import EventMeta, encode_state
from infra.eventstore import EventStore, open_factory
from infra.migrate import migrate
from infra.settings import Settings
from infra.stack import EmbeddedStack, eventsourcing_env
from projections.knowledge.documents import DocumentsProjection
from projections.runner import POSITIONS_CHANNEL

if TYPE_CHECKING:
    from collections.abc import Iterator

console = Console()
OUTCOMES = REGISTRY.context(DocumentsProjection.context).outcomes()
PROJECTIONS = (DocumentsProjection.name, OUTCOMES.name)


@dataclass
class Arrivals:
    """Per projection, its commits in order: (position reached, wall time seen)."""

    seen: dict[str, list[tuple[int, float]]] = field(
        default_factory=lambda: {name: [] for name in PROJECTIONS}
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, position: int, at: float) -> None:
        with self.lock:
            if name in self.seen:
                self.seen[name].append((position, at))

    def reached(self, name: str) -> int:
        with self.lock:
            return self.seen[name][-1][0] if self.seen[name] else 0

    def arrival(self, name: str, position: int) -> float | None:
        """When the first commit at or past ``position`` was seen (after the run)."""
        commits = self.seen[name]
        i = bisect.bisect_left(commits, position, key=lambda c: c[0])
        return commits[i][1] if i < len(commits) else None


def listen(url: str, arrivals: Arrivals, stop: threading.Event) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {POSITIONS_CHANNEL}")
        while not stop.is_set():
            for note in conn.notifies(timeout=0.2):
                at = time.time()
                name, _, position = note.payload.rpartition(":")
                arrivals.add(name, int(position), at)


def pair(i: int, at: datetime) -> list[StoredEvent]:
    """A document's first version and its command's outcome."""
    doc = f"lag-{i}"
    command = uuid7()
    meta = EventMeta(command_id=command, correlation_id=command, actor="bench")
    text = f"commit to row latency sample {i} " * 4
    ingested = DocumentIngested(
        document_id=doc,
        version=1,
        title=f"Document {doc}",
        text=text,
        source="bench",
        tags=["bench"],
        content_sha256="0" * 64,
        chunks=[ChunkSpan(index=0, start=0, end=len(text.rstrip()))],
    )
    outcome = CommandSucceeded(command_id=str(command), command_type="IngestDocument")
    return [
        StoredEvent(document_aggregate_id(doc), 1, ingested.TYPE, encode_state(ingested, at, meta)),
        StoredEvent(
            command_aggregate_id(command), 1, outcome.TYPE, encode_state(outcome, at, meta)
        ),
    ]


@contextlib.contextmanager
def projections_process(url: str, log_path: Path) -> Iterator[None]:
    env = {
        **os.environ,
        "UAIT_DATABASE_URL": url,
        "UAIT_KAFKA_BOOTSTRAP": "unused:1",  # projections never talk to Kafka
        "UAIT_LOG_LEVEL": "WARNING",
    }
    args = [sys.executable, "-m", "uait", "projections", "run"]
    for name in PROJECTIONS:
        args += ["--name", name]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=out)
        try:
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(arrivals: Arrivals, position: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while any(arrivals.reached(name) < position for name in PROJECTIONS):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the projections did not reach position {position}")
        time.sleep(0.01)


def paced_appends(store: EventStore, rate: int, seconds: float, per_append: int) -> int:
    """Append ``rate`` events/s for ``seconds``; returns how many."""
    interval = per_append / rate
    pending: list[StoredEvent] = []
    appended = 0
    i = 0
    started = time.perf_counter()
    while appended < rate * seconds:
        while len(pending) < per_append:
            pending += pair(i, datetime.now(UTC))
            i += 1
        store.append(pending[:per_append])
        pending = pending[per_append:]
        appended += per_append
        # An absolute schedule: a slow append is caught up, not added to every later one.
        delay = started + (appended / per_append) * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    return appended


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def main(*, rate: int, seconds: float, per_append: int) -> None:
    with tempfile.TemporaryDirectory(prefix="uait-bench-lag-") as tmp:
        settings = Settings(kafka_bootstrap="unused:1", redis_url="unused")
        with EmbeddedStack(settings, data_dir=Path(tmp)) as endpoints:
            url = endpoints.database_url
            migrate(url)
            factory = open_factory("knowledge", eventsourcing_env(url))
            store = EventStore("knowledge", factory)
            arrivals = Arrivals()
            stop = threading.Event()
            listener = threading.Thread(target=listen, args=(url, arrivals, stop), daemon=True)
            listener.start()
            try:
                with projections_process(url, Path(tmp) / "projections.log"):
                    # Warm up: the process is following once it has projected an append.
                    store.append(pair(-1, datetime.now(UTC)))
                    wait_for(arrivals, store.head(), timeout_s=120)
                    start = store.head()
                    console.print(f"appending {rate} events/s for {seconds:.0f} s ...")
                    appended = paced_appends(store, rate, seconds, per_append)
                    wait_for(arrivals, store.head(), timeout_s=60)
                latencies = measure(store, arrivals, start)
            finally:
                stop.set()
                listener.join(timeout=5)
                factory.close()
    overall: list[float] = []
    for name, values in latencies.items():
        overall += values
        console.print(
            f"{name}: {len(values):,} events, commit -> row p50 {percentile(values, 0.5):.1f} ms,"
            f" p99 {percentile(values, 0.99):.1f} ms, max {max(values):.1f} ms"
        )
    print(
        f"lag: {appended} events at {rate} events/s, commit -> read-model row "
        f"p50 {percentile(overall, 0.5):.1f} ms, p99 {percentile(overall, 0.99):.1f} ms"
    )


def measure(store: EventStore, arrivals: Arrivals, start: int) -> dict[str, list[float]]:
    """Milliseconds from each event's commit to its projection's commit, per projection."""
    with store.datastore.get_connection() as conn:
        commits = conn.execute(
            "SELECT first_position, last_position, committed_at FROM event_commit_times"
            " WHERE context = 'knowledge' AND first_position > %s ORDER BY first_position",
            (start,),
        ).fetchall()
    handled = {
        DocumentsProjection.name: DocumentsProjection.topics,
        OUTCOMES.name: OUTCOMES.topics,
    }
    notes = store.recorder.select_notifications(start=start, limit=10**7, inclusive_of_start=False)
    topic_of = {n.id: n.topic for n in notes}
    out: dict[str, list[float]] = {name: [] for name in PROJECTIONS}
    for row in commits:
        committed = row["committed_at"].timestamp()
        for position in range(row["first_position"], row["last_position"] + 1):
            for name in PROJECTIONS:
                if topic_of.get(position) not in handled[name]:
                    continue
                arrived = arrivals.arrival(name, position)
                assert arrived is not None, (name, position)
                out[name].append((arrived - committed) * 1000)
    return out
