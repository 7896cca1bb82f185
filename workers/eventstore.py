"""One context's event store: the ``eventsourcing`` library's PostgreSQL application recorder.

Each context has its own table (``<context>_events``), so appends — serialised per table by the
library's EXCLUSIVE lock, which keeps notification ids in commit order — never contend across
contexts, and positions (notification ids) are per context.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder, PostgresFactory
from eventsourcing.utils import Environment, retry
from psycopg.sql import SQL, Identifier

from events.stored import decode

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from eventsourcing.persistence import StoredEvent
    from eventsourcing.postgres import PostgresDatastore

    from events.base import Event


def open_factory(context: str, es_env: dict[str, str], pool_size: int = 4) -> PostgresFactory:
    """The library's PostgreSQL infrastructure for one context (tables named after it)."""
    env = {
        **es_env,
        "POSTGRES_POOL_SIZE": str(pool_size),
        "POSTGRES_MAX_OVERFLOW": "4",
        "POSTGRES_PRE_PING": "y",
        "POSTGRES_LOCK_TIMEOUT": "10",
        # The library's insert function (ENABLE_DB_FUNCTIONS) skips the table lock in 9.5, which
        # would let a projection pass over a late-committing event: keep the locked path.
        "POSTGRES_ENABLE_DB_FUNCTIONS": "n",
    }
    return PostgresFactory(Environment(name=context, env=env))


class BatchRecorder(PostgresApplicationRecorder):
    """The library's application recorder, appending without libpq pipeline mode.

    Same statements, same transaction (EXCLUSIVE table lock, NOTIFY, one INSERT from an array),
    but psycopg's pipeline mode deadlocks on large batches here — the client waits in
    ``Pipeline.sync`` while the server waits for the rest of the query (psycopg#685) — so a
    batch of a few hundred documents would hang the worker forever.
    """

    @retry((InterfaceError, OperationalError), max_attempts=3, wait=0.2)
    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        if not stored_events:
            return []
        with self.datastore.get_connection() as conn, conn.transaction(), conn.cursor() as curs:
            self._insert_events(curs, stored_events, **kwargs)
            self._insert_stored_events(curs, stored_events, **kwargs)
            return list(self._fetch_ids_after_insert_events(curs, stored_events) or [])


class EventStore:
    """Append and load events of one context."""

    def __init__(self, context: str, factory: PostgresFactory) -> None:
        self.context = context
        self.factory = factory
        self.recorder = BatchRecorder(factory.datastore, events_table_name=f"{context}_events")
        self.recorder.create_table()
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

    def append(self, stored_events: Sequence[StoredEvent]) -> list[int]:
        """Insert in ONE transaction; returns the notification ids (positions).

        Raises the library's IntegrityError when any (aggregate id, version) already exists —
        a concurrent writer, or a command whose outcome is already recorded.
        """
        ids = self.recorder.insert_events(stored_events)
        return list(ids or [])

    def load_streams(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Event]]:
        """The decoded events of many aggregates, in one query."""
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

    def existing(self, ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these aggregates have any stored event (used for outcome records)."""
        if not ids:
            return set()
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(self._select_existing, (list(ids),), prepare=True)
            return {row["originator_id"] for row in cur.fetchall()}

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0
