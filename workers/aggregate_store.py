"""The write side's view of a context's event store: loading aggregates from their latest
snapshot and the events after it (``workers.snapshots``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg.sql import SQL, Identifier

from events.stored import decode
from infra.eventstore import EventStore
from workers import snapshots
from workers.snapshots import Stream

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping, Sequence

    from eventsourcing.postgres import PostgresFactory


class AggregateStore(EventStore):
    """A context's event store, with aggregate snapshots taken every N events per type."""

    def __init__(
        self,
        context: str,
        factory: PostgresFactory,
        *,
        snapshot_every: Mapping[str, int] | None = None,
        statement_timeout_ms: int | None = None,
    ) -> None:
        super().__init__(context, factory, statement_timeout_ms=statement_timeout_ms)
        self.snapshot_every = snapshots.check_intervals(snapshot_every or {})
        """Aggregate type name -> take a snapshot every N events (none when absent)."""
        # One round trip: each aggregate's latest snapshot, then the events after it (all of
        # them when it has none), in stream order.
        self._select_latest = SQL(
            "WITH s AS ("
            " SELECT DISTINCT ON (originator_id) originator_id, originator_version, topic, state"
            " FROM {snapshots} WHERE originator_id = ANY(%(ids)s)"
            " ORDER BY originator_id, originator_version DESC)"
            " SELECT true AS snapshot, originator_id, originator_version, topic, state FROM s"
            " UNION ALL"
            " SELECT false, e.originator_id, e.originator_version, e.topic, e.state"
            " FROM {events} e LEFT JOIN s ON s.originator_id = e.originator_id"
            " WHERE e.originator_id = ANY(%(ids)s)"
            " AND e.originator_version > COALESCE(s.originator_version, 0)"
            " ORDER BY 2, 1 DESC, 3"
        ).format(snapshots=Identifier(self.snapshots_table), events=Identifier(self.table))

    def load_latest(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Stream]:
        """What deciding needs: each aggregate's latest usable snapshot and the events after it.

        One query either way: without snapshotting, the full histories; with it, each latest
        snapshot and the events after it. A snapshot of a shape this code no longer reads is
        ignored and its aggregate loads from its whole history (a second query, rarely).
        """
        if not self.snapshot_every:
            return {i: Stream(events=events) for i, events in self.load_streams(ids).items()}
        streams: dict[uuid.UUID, Stream] = {i: Stream() for i in ids}
        if not ids:
            return streams
        unusable: list[uuid.UUID] = []
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(self._select_latest, {"ids": list(ids)}, prepare=True)
            for row in cur.fetchall():
                stream = streams[row["originator_id"]]
                if not row["snapshot"]:
                    stream.events.append(decode(row["topic"], bytes(row["state"])).event)
                    continue
                snapshot = snapshots.decode(
                    row["topic"], row["originator_version"], bytes(row["state"])
                )
                if snapshot is None:
                    unusable.append(row["originator_id"])
                else:
                    stream.snapshot = snapshot
        if unusable:
            # A snapshot of an older shape: these load from their whole history instead.
            for aggregate_id, events in self.load_streams(unusable).items():
                streams[aggregate_id] = Stream(events=events)
        return streams
