"""Operational rows for commands in flight (``command_log``), written outside the event store.

These say that a worker has started a command and how often; they are not the outcome (that is
an event) and are not rebuilt from the event store. Losing one loses no fact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresDatastore

    from workers.items import Item

_UPSERT = """
INSERT INTO command_log (command_id, context, command_type, accepted_at, started_at,
                         last_attempt_at, attempts, kafka_partition, kafka_offset)
SELECT id, %s, type, accepted, %s, %s, 1, part, off
FROM unnest(%s::uuid[], %s::text[], %s::timestamptz[], %s::int[], %s::bigint[])
     AS t(id, type, accepted, part, off)
ON CONFLICT (command_id) DO UPDATE SET
    started_at = COALESCE(command_log.started_at, EXCLUDED.started_at),
    last_attempt_at = EXCLUDED.last_attempt_at,
    attempts = command_log.attempts + 1,
    kafka_partition = EXCLUDED.kafka_partition,
    kafka_offset = EXCLUDED.kafka_offset
"""


def mark_started(datastore: PostgresDatastore, context: str, items: list[Item]) -> None:
    """Record that these commands are being processed (one statement for the batch)."""
    if not items:
        return
    now = datetime.now(UTC)
    ids, types, accepted, parts, offsets = [], [], [], [], []
    for item in items:
        ids.append(item.command_id)
        types.append(item.type)
        accepted.append(item.envelope.occurred_at if item.envelope else now)
        parts.append(item.record.partition)
        offsets.append(item.record.offset)
    with datastore.get_connection() as conn:
        conn.execute(_UPSERT, (context, now, now, ids, types, accepted, parts, offsets))
