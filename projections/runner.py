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
import psycopg
from eventsourcing.persistence import IntegrityError, PersistenceError, Tracking
from opentelemetry.trace import SpanKind
from psycopg.sql import SQL, Identifier

from events.stored import decode
from projections.base import Envelope, TransientProjectionError
from projections.control import CONTROL_CHANNEL, read_state, write_state
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
_TRANSIENT = (
    PersistenceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
    TransientProjectionError,
)


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
        # A follower of another projection's results never reads past that one's position.
        self.behind: str | None = getattr(projection, "behind", None)

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
        """Project the events in the next ``batch_size`` positions past the tracked one; returns
        how many positions it passed (0: nothing new).

        Only the event types the projection handles are read (``topics``, filtered by the
        database), but the position advances over the whole range: the store's head is read
        first, and every position up to it has committed (appends are serialised by the table
        lock, in position order), so the range holds nothing that could still appear.
        """
        start = self._current()
        head = self.recorder.max_notification_id() or 0
        end = min(start + self.batch_size, head)
        if self.behind is not None:
            end = min(end, self.tracking.max_tracking_id(self.behind) or 0)
        if end <= start:
            return 0
        topics = sorted(self.projection.topics)
        notes = (
            list(
                self.recorder.select_notifications(
                    start=start,
                    limit=self.batch_size,
                    stop=end,
                    topics=topics,
                    inclusive_of_start=False,
                )
            )
            if topics
            else []
        )
        started = time.perf_counter()
        started_ns = time.time_ns()
        batch = to_envelopes(self.projection, notes)
        try:
            with self.datastore.transaction(commit=True) as cur:
                if not self._still_at(cur, start):
                    # A rebuild swapped the tables, or another runner moved on: re-read.
                    self._position = None
                    return 0
                if batch:
                    self.projection.apply(cur, batch)
                # The library's single-row tracking refuses to go backwards (IntegrityError):
                # a second runner of the same projection can never apply a batch twice.
                self.tracking._insert_tracking(cur, Tracking(self.projection.name, end))
                cur.execute(
                    "SELECT pg_notify(%s, %s)",
                    (POSITIONS_CHANNEL, f"{self.projection.name}:{end}"),
                )
        except IntegrityError:
            log.warning("%s: another runner moved past %d", self.projection.name, start)
            self._position = None
            return 0
        except BaseException:
            self._position = None
            raise
        self._position = end
        self._observe(end - start, end, head, notes[-1] if notes else None, started)
        if tracing_enabled():
            self._trace(batch, started_ns, time.time_ns())
        return end - start

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

    def _still_at(self, cur: Cursor[Any], start: int) -> bool:
        """Serialise with rebuild swaps (advisory lock) and check the position is still ours."""
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.projection.name,))
        cur.execute(
            SQL("SELECT notification_id FROM {}.{} WHERE application_name = %s").format(
                Identifier(self.datastore.schema), Identifier(self.tracking.tracking_table_name)
            ),
            (self.projection.name,),
        )
        row = cur.fetchone()
        return (row["notification_id"] if row else 0) == start

    def _observe(
        self, passed: int, position: int, head: int, last: Notification | None, started: float
    ) -> None:
        name = self.projection.name
        PROJECTION_BATCH_DURATION.labels(name).observe(time.perf_counter() - started)
        PROJECTION_EVENTS.labels(name).inc(passed)
        PROJECTION_POSITION.labels(name).set(position)
        PROJECTION_HEAD.labels(name).set(head)
        PROJECTION_LAG_EVENTS.labels(name).set(head - position)
        if head > position and last is not None:
            # How old the newest applied event is while newer ones wait: the time lag.
            at = datetime.fromisoformat(orjson.loads(last.state)["at"])
            PROJECTION_LAG_SECONDS.labels(name).set(
                max((datetime.now(UTC) - at).total_seconds(), 0)
            )
        elif head <= position:
            PROJECTION_LAG_SECONDS.labels(name).set(0)

    def catch_up(self, stop: threading.Event | None = None) -> int:
        total = 0
        while not (stop and stop.is_set()):
            n = self.run_batch()
            total += n
            if n == 0:
                break
        return total

    def run_forever(self, stop: threading.Event, *, idle_wait_s: float = 0.5) -> None:
        """Follow the events table until ``stop`` is set.

        Survives database restarts (backs off and reconnects). An event that cannot be applied
        stops this projection only: it is marked ``failed`` with the event and the error, and
        waits, never skipping the event, until ``uait projections retry`` sets it running again.
        ``uait projections pause`` holds it where it is.
        """
        name = self.projection.name
        backoff = 0.1
        up = PROJECTION_UP.labels(name)
        while not stop.is_set():
            try:
                with self.datastore.get_connection() as listen:
                    listen.execute(SQL("LISTEN {}").format(Identifier(self.recorder.channel_name)))
                    listen.execute(SQL("LISTEN {}").format(Identifier(CONTROL_CHANNEL)))
                    if self.behind is not None:  # woken by the other projection's commits
                        listen.execute(SQL("LISTEN {}").format(Identifier(POSITIONS_CHANNEL)))
                    backoff = 0.1
                    state = read_state(self.datastore, name).state
                    while not stop.is_set():
                        up.set(1 if state == "running" else 0)
                        if state == "running" and self._advance() >= self.batch_size:
                            continue
                        # Sleep until an append or a control change is NOTIFYed; the timeout
                        # only bounds how long a stop request waits.
                        for note in listen.notifies(timeout=idle_wait_s, stop_after=1):
                            if note.channel == CONTROL_CHANNEL and note.payload == name:
                                state = read_state(self.datastore, name).state
                                self._position = None
            except Exception:
                up.set(0)
                log.exception("%s: database or a service unavailable; reconnecting", name)
                self._position = None
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _advance(self) -> int:
        """One batch; on an event that cannot be applied, find it and mark the projection failed."""
        try:
            return self.run_batch()
        except _TRANSIENT:
            raise  # the database or another service, not the event: reconnect and retry
        except Exception:
            log.exception("%s: a batch failed; looking for the event", self.projection.name)
        # Apply one event per transaction up to the one that fails, so the error names it.
        self._position = None
        size, self.batch_size = self.batch_size, 1
        try:
            while True:
                position = self._current() + 1
                try:
                    if self.run_batch() == 0:
                        return 0  # it went through this time
                except _TRANSIENT:
                    raise
                except Exception as exc:
                    self._fail(position, exc)
                    return 0
        finally:
            self.batch_size = size

    def _fail(self, position: int, exc: Exception) -> None:
        notes = self.recorder.select_notifications(start=position, limit=1)
        topic = notes[0].topic if notes else None
        with self.datastore.transaction(commit=True) as cur:
            write_state(
                cur,
                self.projection.name,
                state="failed",
                error=f"{type(exc).__name__}: {exc}"[:4000],
                failed_position=position,
                failed_event_type=topic,
            )
        log.error(
            "%s: failed at position %d (%s); it waits for `uait projections retry`",
            self.projection.name,
            position,
            topic,
        )


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
