"""One context's event store: the ``eventsourcing`` library's PostgreSQL application recorder.

Each context has its own table (``<context>_events``), so appends — serialised per table by the
library's EXCLUSIVE lock, which keeps notification ids in commit order — never contend across
contexts, and positions (notification ids) are per context.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import InterfaceError, OperationalError, StoredEvent
from eventsourcing.postgres import (
    PostgresAggregateRecorder,
    PostgresApplicationRecorder,
    PostgresFactory,
    PostgresTrackingRecorder,
)
from eventsourcing.utils import Environment, retry
from psycopg.sql import SQL, Identifier

from events.stored import decode, encode_state
from telemetry.metrics import APPEND_DURATION, APPEND_EVENTS, EVENTS_APPENDED

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence
    from datetime import datetime

    from eventsourcing.postgres import PostgresDatastore

    from events.base import Event
    from events.stored import DecodedEvent, EventMeta


@dataclass(frozen=True)
class Guarded:
    """A statement run in an append's transaction, after its events. With ``expect_rows``, the
    append commits only if the statement touched at least that many rows (a fence: e.g. the
    lease of a run is still this worker's), and raises ``FenceError`` otherwise."""

    sql: str
    params: Sequence[Any] = ()
    expect_rows: int | None = None


class FenceError(RuntimeError):
    """Raised when a guarded statement of an append did not hold: nothing was appended."""


def stored_event(
    aggregate_id: uuid.UUID, version: int, event: Event, now: datetime, meta: EventMeta
) -> StoredEvent:
    """``event`` as the store keeps it: version ``version`` of ``aggregate_id``'s stream."""
    return StoredEvent(
        originator_id=aggregate_id,
        originator_version=version,
        topic=event.TYPE,
        state=encode_state(event, now, meta),
    )


def open_factory(context: str, es_env: dict[str, str], pool_size: int = 4) -> PostgresFactory:
    """The library's PostgreSQL infrastructure for one context (tables named after it)."""
    env = {
        **es_env,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "4",
        # No ping on every checkout (a round trip each): a dead connection fails the call, the
        # library retries it on a fresh one, and a failed batch is redelivered anyway.
        "POSTGRES_PRE_PING": "n",
        "POSTGRES_LOCK_TIMEOUT": "10",
        # The library's insert function (ENABLE_DB_FUNCTIONS) skips the table lock in 9.5, which
        # would let a projection pass over a late-committing event: keep the locked path.
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
        # Tables are created once, below, under a lock: the library's CREATE TABLE IF NOT EXISTS
        # races when a worker and a projection runner start together (duplicate pg_type key).
        "CREATE_TABLE": "n",
    }
    factory = PostgresFactory(Environment(name=context, env=env))
    _create_tables(factory, context)
    return factory


def _create_tables(factory: PostgresFactory, context: str) -> None:
    datastore = factory.datastore
    # One lock for every context: the library's DDL also touches objects the contexts share
    # (its composite types and functions), and two contexts created at once by two processes
    # fail with "tuple concurrently updated".
    key = "uait-tables"
    with datastore.get_connection() as lock:
        lock.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        try:
            PostgresApplicationRecorder(
                datastore, events_table_name=f"{context}_events"
            ).create_table()
            PostgresTrackingRecorder(
                datastore, tracking_table_name=f"{context}_tracking"
            ).create_table()
            # The library's snapshot store: its own table, never read as events.
            PostgresAggregateRecorder(
                datastore, events_table_name=f"{context}_snapshots"
            ).create_table()
        finally:
            lock.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))


class BatchRecorder(PostgresApplicationRecorder):
    """The library's application recorder, with a faster append for large batches.

    Same transaction as the library's (EXCLUSIVE table lock so positions follow commit order,
    NOTIFY, one INSERT), but:

    - no libpq pipeline mode: psycopg's pipeline deadlocks on large batches here — the client
      waits in ``Pipeline.sync`` while the server waits for the rest of the query (psycopg#685);
    - the rows travel as four plain arrays in binary, not as an array of a composite type, which
      psycopg dumps as text in Python (a fifth of the worker's time at 500 commands per batch);
    - with ``statement_timeout_ms`` every statement of the append runs under PostgreSQL's
      ``statement_timeout``: the server cancels a stuck append and its transaction can no longer
      commit, so an append never commits late, after the batch was given up and retried. (A
      client-side timeout could abandon a transaction that still commits.)
    """

    def __init__(
        self,
        datastore: PostgresDatastore,
        *,
        events_table_name: str,
        commit_times_context: str | None = None,
        snapshots_table_name: str | None = None,
        statement_timeout_ms: int | None = None,
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self.commit_times_context = commit_times_context
        self.statement_timeout_ms = statement_timeout_ms
        self._insert_arrays = SQL(
            "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[]) "
            "RETURNING notification_id"
        ).format(Identifier(datastore.schema), Identifier(events_table_name))
        self._insert_snapshots = (
            SQL(
                "INSERT INTO {}.{} (originator_id, originator_version, topic, state) "
                "SELECT * FROM unnest(%b::uuid[], %b::bigint[], %b::text[], %b::bytea[])"
            ).format(Identifier(datastore.schema), Identifier(snapshots_table_name))
            if snapshots_table_name
            else None
        )

    @retry((InterfaceError, OperationalError), max_attempts=3, wait=0.2)
    def insert_events(
        self,
        stored_events: Sequence[StoredEvent],
        *,
        snapshots: Sequence[StoredEvent] = (),
        guarded: Sequence[Guarded] = (),
        **kwargs: Any,
    ) -> list[int]:
        """Append events, and the snapshots they make due, in one transaction (with the guarded
        statements given, which may refuse it)."""
        if not stored_events:
            return []
        columns = _columns(stored_events)
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            if self.statement_timeout_ms is not None:
                # Local to this transaction: the connection goes back to the pool unchanged.
                curs.execute(
                    "SELECT set_config('statement_timeout', %s, true)",
                    (f"{self.statement_timeout_ms}ms",),
                )
            self._lock_table(curs)
            self._notify_channel(curs)
            curs.execute(self._insert_arrays, columns)
            ids = [row["notification_id"] for row in curs.fetchall()]
            if self.commit_times_context is not None:
                # Under the table lock: commit times follow positions, never going back.
                curs.execute(
                    "INSERT INTO event_commit_times"
                    " (context, first_position, last_position, committed_at)"
                    " VALUES (%s, %s, %s, clock_timestamp())",
                    (self.commit_times_context, min(ids), max(ids)),
                )
            if snapshots:
                if self._insert_snapshots is None:
                    raise ValueError("this recorder has no snapshot table")
                curs.execute(self._insert_snapshots, _columns(snapshots))
            for statement in guarded:
                curs.execute(statement.sql, statement.params)
                if statement.expect_rows is not None and curs.rowcount < statement.expect_rows:
                    raise FenceError(f"refused by: {statement.sql.split(chr(10))[0][:80]}")
            return ids


def _columns(stored: Sequence[StoredEvent]) -> tuple[list[Any], ...]:
    return (
        [e.originator_id for e in stored],
        [e.originator_version for e in stored],
        [e.topic for e in stored],
        [e.state for e in stored],
    )


class EventStore:
    """Append and read the events of one context (and store the snapshots an append makes due:
    what a snapshot holds is the write side's business, see ``workers.aggregate_store``)."""

    def __init__(
        self,
        context: str,
        factory: PostgresFactory,
        *,
        statement_timeout_ms: int | None = None,
    ) -> None:
        self.context = context
        self.factory = factory
        self.snapshots_table = f"{context}_snapshots"
        self.recorder = BatchRecorder(
            factory.datastore,
            events_table_name=f"{context}_events",
            commit_times_context=context if _has_commit_times(factory.datastore) else None,
            snapshots_table_name=self.snapshots_table,
            statement_timeout_ms=statement_timeout_ms,
        )
        self.table = self.recorder.events_table_name
        self._select_streams = SQL(
            "SELECT originator_id, originator_version, topic, state FROM {} "
            "WHERE originator_id = ANY(%s) ORDER BY originator_id, originator_version"
        ).format(Identifier(self.table))
        self._select_existing = SQL(
            "SELECT originator_id FROM {} WHERE originator_id = ANY(%s) AND originator_version = 1"
        ).format(Identifier(self.table))

    @property
    def datastore(self) -> PostgresDatastore:
        return self.factory.datastore

    def append(
        self,
        stored_events: Sequence[StoredEvent],
        snapshots: Sequence[StoredEvent] = (),
        guarded: Sequence[Guarded] = (),
    ) -> list[int]:
        """Insert in ONE transaction (with the snapshots given); returns the positions.

        Raises the library's IntegrityError when any (aggregate id, version) already exists —
        a concurrent writer, or a command whose outcome is already recorded.
        """
        started = time.perf_counter()
        ids = self.recorder.insert_events(stored_events, snapshots=snapshots, guarded=guarded)
        APPEND_DURATION.labels(self.context).observe(time.perf_counter() - started)
        APPEND_EVENTS.labels(self.context).observe(len(stored_events))
        EVENTS_APPENDED.labels(self.context).inc(len(stored_events))
        return list(ids or [])

    def load_streams(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Event]]:
        """The full decoded histories of many aggregates, in one query."""
        streams: dict[uuid.UUID, list[Event]] = defaultdict(list)
        if not ids:
            return streams
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(self._select_streams, (list(ids),), prepare=True)
            for row in cur.fetchall():
                streams[row["originator_id"]].append(
                    decode(row["topic"], bytes(row["state"])).event
                )
        return streams

    def load_decoded_many(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[DecodedEvent]]:
        """Many aggregates' histories with each event's time and meta, in one query."""
        histories: dict[uuid.UUID, list[DecodedEvent]] = defaultdict(list)
        if not ids:
            return histories
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(self._select_streams, (list(ids),), prepare=True)
            for row in cur.fetchall():
                histories[row["originator_id"]].append(decode(row["topic"], bytes(row["state"])))
        return histories

    def existing(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these aggregates have any stored event (used for outcome records)."""
        if not ids:
            return set()
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(self._select_existing, (list(ids),), prepare=True)
            return {row["originator_id"] for row in cur.fetchall()}

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0


def _has_commit_times(datastore: PostgresDatastore) -> bool:
    """Whether migration 0003 has run (stores opened before migrating append without times)."""
    with datastore.get_connection() as conn:
        row = conn.execute("SELECT to_regclass('event_commit_times') AS t").fetchone()
    return row is not None and row["t"] is not None
