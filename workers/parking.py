"""Aggregates parked behind a command in the retry path (table ``command_parking``).

While an aggregate has a command in the retry topic, every later command for it is deferred to
the retry topic too, behind it, so per-aggregate order holds while other aggregates keep
flowing. A command is unparked after its outcome is committed (never before: a later command
could otherwise overtake it), or when it is dead-lettered. A crash between the two leaves a row
whose command already has its outcome; ``heads`` drops such rows when it meets them.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from events.ids import command_aggregate_id

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from psycopg import Connection

    from workers.aggregate_store import AggregateStore
    from workers.items import Item

log = logging.getLogger("uait.worker")

_HEADS = """
SELECT aggregate_key, command_id FROM command_parking
WHERE context = %s AND aggregate_key = ANY(%s) ORDER BY aggregate_key, seq
"""
_PARK = """
INSERT INTO command_parking (context, aggregate_key, command_id)
SELECT %s, k, c FROM unnest(%s::text[], %s::uuid[]) WITH ORDINALITY AS t(k, c, ord)
ORDER BY ord
ON CONFLICT DO NOTHING
"""
_UNPARK = """
DELETE FROM command_parking p USING unnest(%s::text[], %s::uuid[]) AS t(k, c)
WHERE p.context = %s AND p.aggregate_key = t.k AND p.command_id = t.c
"""


class Parking:
    def __init__(self, store: AggregateStore) -> None:
        self.store = store
        self.context = store.context

    def heads(self, keys: Sequence[str]) -> dict[str, list[uuid.UUID]]:
        """The parked commands of these aggregates, in order (one query; stale rows dropped)."""
        with self.store.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(_HEADS, (self.context, list(keys)))
            rows = [(row["aggregate_key"], row["command_id"]) for row in cur.fetchall()]
        if not rows:
            return {}
        finished = self.store.existing([command_aggregate_id(c) for _, c in rows])
        stale = [(k, c) for k, c in rows if command_aggregate_id(c) in finished]
        if stale:
            log.info("unparking %d command(s) that already have their outcome", len(stale))
            with self.store.datastore.get_connection() as conn:
                self.unpark(stale, conn)
        queues: dict[str, list[uuid.UUID]] = {}
        for key, command_id in rows:
            if (key, command_id) not in stale:
                queues.setdefault(key, []).append(command_id)
        return queues

    def park(self, entries: Sequence[tuple[str, uuid.UUID]], conn: Connection[Any]) -> None:
        """Queue these commands behind their aggregates' earlier ones (order as given)."""
        if entries:
            conn.execute(_PARK, (self.context, [k for k, _ in entries], [c for _, c in entries]))

    def unpark(self, entries: Sequence[tuple[str, uuid.UUID]], conn: Connection[Any]) -> None:
        if entries:
            conn.execute(_UNPARK, ([k for k, _ in entries], [c for _, c in entries], self.context))


class Queues:
    """Parked aggregates while a batch is decided: key -> its commands in the retry path, first
    one first. Loaded by ``Parking.heads``; a copy is taken per append attempt, so an attempt
    undone by a conflict leaves no trace."""

    def __init__(self, keys: dict[str, list[uuid.UUID]]) -> None:
        self.keys = keys

    def copy(self) -> Queues:
        return Queues({k: list(v) for k, v in self.keys.items()})

    def blocking(self, item: Item) -> uuid.UUID | None:
        """The command this one must wait for, if its aggregate is parked behind another."""
        queue = self.keys.get(item.key or "")
        if queue and queue[0] != item.command_id:
            return queue[0]
        return None

    def park(self, item: Item) -> None:
        if item.key is None:
            return
        queue = self.keys.setdefault(item.key, [])
        if item.command_id not in queue:
            queue.append(item.command_id)

    def release(self, item: Item) -> bool:
        queue = self.keys.get(item.key or "")
        if not queue or item.command_id not in queue:
            return False
        queue.remove(item.command_id)
        return True
