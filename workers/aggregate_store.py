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
        self._select_snapshots = SQL(
            "SELECT DISTINCT ON (originator_id) originator_id, originator_version, topic, state"
            " FROM {} WHERE originator_id = ANY(%s)"
            " ORDER BY originator_id, originator_version DESC"
        ).format(Identifier(self.snapshots_table))
        self._select_after = SQL(
            "SELECT e.originator_id, e.originator_version, e.topic, e.state"
            " FROM unnest(%s::uuid[], %s::bigint[]) AS s(id, after)"
            " JOIN {} e ON e.originator_id = s.id AND e.originator_version > s.after"
            " ORDER BY e.originator_id, e.originator_version"
        ).format(Identifier(self.table))

    def load_latest(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Stream]:
        """What deciding needs: each aggregate's latest usable snapshot and the events after it.

        Without snapshotting, the full histories in one query; with it, one query for the
        snapshots and one for the events after each (all of them when there is none).
        """
        if not self.snapshot_every:
            return {i: Stream(events=events) for i, events in self.load_streams(ids).items()}
        streams: dict[uuid.UUID, Stream] = {i: Stream() for i in ids}
        if not ids:
            return streams
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            cur.execute(self._select_snapshots, (list(ids),), prepare=True)
            for row in cur.fetchall():
                snapshot = snapshots.decode(
                    row["topic"], row["originator_version"], bytes(row["state"])
                )
                if snapshot is not None:
                    streams[row["originator_id"]].snapshot = snapshot
            after = [s.version if (s := streams[i].snapshot) else 0 for i in streams]
            cur.execute(self._select_after, (list(streams), after), prepare=True)
            for row in cur.fetchall():
                streams[row["originator_id"]].events.append(
                    decode(row["topic"], bytes(row["state"])).event
                )
        return streams
