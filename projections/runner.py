"""The batched projection runner, on the ``eventsourcing`` library's tracking table.

Many events per transaction and one tracking update: the view rows and the new position commit
together, so a crash at any moment leaves the read model at exactly its tracked position. It
follows new events by LISTEN on the events table's channel (the library NOTIFYs on each append),
not by polling. After each commit it NOTIFYs ``uait_projections`` with ``name:position`` so the
ingress can answer ``?after=`` and ``Prefer: wait`` without polling either.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from eventsourcing.persistence import IntegrityError, Tracking
from opentelemetry.trace import SpanKind
from psycopg.sql import SQL, Identifier

from events.stored import decode
from projections.base import Envelope
from telemetry.metrics import (
    PROJECTION_BATCH_DURATION,
    PROJECTION_EVENTS,
    PROJECTION_HEAD,
    PROJECTION_LAG_EVENTS,
    PROJECTION_LAG_SECONDS,
    PROJECTION_POSITION,
    PROJECTION_UP,
)
from telemetry.tracing import extract, tracer, tracing_enabled

if TYPE_CHECKING:
    import threading

    from eventsourcing.persistence import Notification
    from eventsourcing.postgres import (
        PostgresApplicationRecorder,
        PostgresDatastore,
        PostgresTrackingRecorder,
    )
    from psycopg import Cursor

    from projections.base import Projection

log = logging.getLogger("uait.projections")

POSITIONS_CHANNEL = "uait_projections"


def to_envelopes(projection: Projection, notes: list[Notification]) -> list[Envelope]:
    out = []
    for n in notes:
        if n.topic not in projection.topics:
            continue
        d = decode(n.topic, n.state)
        out.append(
            Envelope(
                position=n.id,
                aggregate_id=n.originator_id,
                aggregate_version=n.originator_version,
                event=d.event,
                occurred_at=d.occurred_at,
                meta=d.meta,
            )
        )
    return out


class ProjectionRunner:
    def __init__(
        self,
        projection: Projection,
        recorder: PostgresApplicationRecorder,
        tracking: PostgresTrackingRecorder,
        *,
        batch_size: int = 2000,
    ) -> None:
        self.projection = projection
        self.recorder = recorder
        self.tracking = tracking
        self.batch_size = batch_size
        self.datastore: PostgresDatastore = recorder.datastore
        self._position: int | None = None  # cached; re-read after a start or a conflict

    def setup(self) -> None:
        with self.datastore.transaction(commit=True) as cur:
            self.projection.create(cur)

    def position(self) -> int:
        return self.tracking.max_tracking_id(self.projection.name) or 0

    def _current(self) -> int:
        if self._position is None:
            self._position = self.position()
        return self._position

    def run_batch(self) -> int:
        """Project up to ``batch_size`` events past the tracked position; returns how many."""
        start = self._current()
        notes = list(
            self.recorder.select_notifications(
                start=start, limit=self.batch_size, inclusive_of_start=False
            )
        )
        if not notes:
            return 0
        started = time.perf_counter()
        started_ns = time.time_ns()
        batch = to_envelopes(self.projection, notes)
        last = notes[-1].id
        try:
            with self.datastore.transaction(commit=True) as cur:
                if batch:
                    self.projection.apply(cur, batch)
                # The library's single-row tracking refuses to go backwards (IntegrityError):
                # a second runner of the same projection can never apply a batch twice.
                self.tracking._insert_tracking(cur, Tracking(self.projection.name, last))
                cur.execute(
                    "SELECT pg_notify(%s, %s)",
                    (POSITIONS_CHANNEL, f"{self.projection.name}:{last}"),
                )
        except IntegrityError:
            log.warning("%s: another runner moved past %d", self.projection.name, start)
            self._position = None
            return 0
        except BaseException:
            self._position = None
            raise
        self._position = last
        self._observe(notes, started)
        if tracing_enabled():
            self._trace(batch, started_ns, time.time_ns())
        return len(notes)

    def _trace(self, batch: list[Envelope], start: int, end: int) -> None:
        """A span per applied event, in the trace of the command that caused it."""
        name = self.projection.name
        for env in batch:
            parent = env.meta.get("traceparent")
            if not parent:
                continue
            span = tracer().start_span(
                f"project {name}",
                context=extract({"traceparent": parent}),
                kind=SpanKind.INTERNAL,
                start_time=start,
                attributes={
                    "uait.projection": name,
                    "uait.event.type": env.event.TYPE,
                    "uait.event.position": env.position,
                    "uait.batch.size": len(batch),
                },
            )
            span.end(end_time=end)

    def _observe(self, notes: list[Notification], started: float) -> None:
        name = self.projection.name
        last = notes[-1]
        PROJECTION_BATCH_DURATION.labels(name).observe(time.perf_counter() - started)
        PROJECTION_EVENTS.labels(name).inc(len(notes))
        PROJECTION_POSITION.labels(name).set(last.id)
        head = self.recorder.max_notification_id() or last.id
        PROJECTION_HEAD.labels(name).set(head)
        PROJECTION_LAG_EVENTS.labels(name).set(head - last.id)
        if head > last.id:
            # How old the newest applied event is while newer ones wait: the time lag.
            at = datetime.fromisoformat(orjson.loads(last.state)["at"])
            PROJECTION_LAG_SECONDS.labels(name).set(
                max((datetime.now(UTC) - at).total_seconds(), 0)
            )
        else:
            PROJECTION_LAG_SECONDS.labels(name).set(0)

    def catch_up(self, stop: threading.Event | None = None) -> int:
        total = 0
        while not (stop and stop.is_set()):
            n = self.run_batch()
            total += n
            if n == 0:
                break
        return total

    def run_forever(self, stop: threading.Event, *, idle_wait_s: float = 5.0) -> None:
        """Follow the events table until ``stop`` is set; survives database restarts."""
        backoff = 0.1
        running = PROJECTION_UP.labels(self.projection.name)
        while not stop.is_set():
            try:
                with self.datastore.get_connection() as listen:
                    listen.execute(SQL("LISTEN {}").format(Identifier(self.recorder.channel_name)))
                    backoff = 0.1
                    running.set(1)
                    while not stop.is_set():
                        if self.run_batch() >= self.batch_size:
                            continue
                        # Nothing more right now: sleep until the next append is NOTIFYed.
                        # The timeout only bounds how long a stop request waits.
                        for _ in listen.notifies(timeout=min(idle_wait_s, 0.5), stop_after=1):
                            pass
            except Exception:
                # The database went away, or an event cannot be applied. Either way the batch is
                # not committed and nothing is skipped: retry the same position after a pause.
                running.set(0)
                log.exception("%s: stopped at %d; retrying", self.projection.name, self._current())
                self._position = None
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)


def rebuild_into(
    projection: Projection,
    recorder: PostgresApplicationRecorder,
    schema: str,
    *,
    batch_size: int = 5000,
) -> int:
    """Project every stored event into fresh tables in ``schema``; returns events read.

    Used to check that a read model is a pure function of the event store.
    """
    datastore = recorder.datastore
    with datastore.transaction(commit=True) as cur:
        cur.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(schema)))
        cur.execute(SQL("CREATE SCHEMA {}").format(Identifier(schema)))
        _use_schema(cur, schema)
        projection.create(cur)
    position = 0
    total = 0
    while True:
        notes = list(
            recorder.select_notifications(
                start=position, limit=batch_size, inclusive_of_start=False
            )
        )
        if not notes:
            return total
        with datastore.transaction(commit=True) as cur:
            _use_schema(cur, schema)
            batch = to_envelopes(projection, notes)
            if batch:
                projection.apply(cur, batch)
        position = notes[-1].id
        total += len(notes)


def _use_schema(cur: Cursor[Any], schema: str) -> None:
    cur.execute(SQL("SET LOCAL search_path TO {}, public").format(Identifier(schema)))
