"""Pages of the event store for a rebuild: raw rows, and only the events a projection handles.

The library's ``select_notifications`` builds a dict and a ``Notification`` for every row and
sends every state; a rebuild reads millions of rows, so it asks for plain tuples in binary and
for the state only of the event types the projection handles (the others still count: their
positions are recorded like any other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from psycopg.rows import tuple_row
from psycopg.sql import SQL, Identifier

from events.stored import decode
from projections.base import Envelope

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresApplicationRecorder

    from projections.base import Projection


@dataclass(frozen=True)
class Page:
    """``count`` stored events after a position, up to ``last``; ``batch`` the handled ones."""

    count: int
    last: int
    batch: list[Envelope]


class PageReader:
    def __init__(
        self, projection: Projection, recorder: PostgresApplicationRecorder, size: int
    ) -> None:
        self.datastore = recorder.datastore
        self.size = size
        self._topics = sorted(projection.topics)
        self._select = SQL(
            "SELECT notification_id, originator_id, originator_version, topic,"
            " CASE WHEN topic = ANY(%s) THEN state END"
            " FROM {}.{} WHERE notification_id > %s ORDER BY notification_id LIMIT %s"
        ).format(Identifier(self.datastore.schema), Identifier(recorder.events_table_name))

    def read(self, position: int) -> Page:
        with self.datastore.get_connection() as conn, conn.cursor(row_factory=tuple_row) as cur:
            cur.execute(self._select, (self._topics, position, self.size), binary=True)
            rows = cur.fetchall()
        if not rows:
            return Page(0, position, [])
        batch = []
        for position, aggregate_id, version, topic, state in rows:
            if state is None:
                continue
            d = decode(topic, state)
            batch.append(Envelope(position, aggregate_id, version, d.event, d.occurred_at, d.meta))
        return Page(len(rows), rows[-1][0], batch)
