"""Re-publish stored events to a Kafka topic, by position or by commit time.

Positions are per context. Times come from the commit-time index (``event_commit_times``), which
the append transaction writes under the table lock, so a time selects exactly the events
committed at or after it (``--from-time``) or before it (``--to-time``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from events.stored import decode
from projections.base import Envelope
from projections.relay import record

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from eventsourcing.postgres import PostgresDatastore

    from infra.eventstore import EventStore
    from projections.relay import BlockingProducer

PAGE = 2000

FIRST_POSITION_SINCE = (
    "SELECT min(first_position) AS p FROM event_commit_times"
    " WHERE context = %s AND committed_at >= %s"
)


def first_position_since(datastore: PostgresDatastore, context: str, since: datetime) -> int | None:
    """The position of the first event of ``context`` committed at or after ``since``."""
    with datastore.get_connection() as conn:
        row = conn.execute(FIRST_POSITION_SINCE, (context, since)).fetchone()
    return row["p"] if row else None


@dataclass(frozen=True)
class Window:
    """Positions ``(after, until]`` of one context's store."""

    after: int
    until: int

    @property
    def size(self) -> int:
        return max(self.until - self.after, 0)


def window(
    store: EventStore,
    *,
    from_position: int | None = None,
    from_time: datetime | None = None,
    to_position: int | None = None,
    to_time: datetime | None = None,
) -> Window:
    """The positions selected by inclusive starts and exclusive ends (position or time)."""
    after = (from_position - 1) if from_position else 0
    until = store.head()
    if from_time is not None:
        first = first_position_since(store.datastore, store.context, from_time)
        after = max(after, (first - 1) if first is not None else until)
    with store.datastore.get_connection() as conn:
        if to_time is not None:
            row = conn.execute(
                "SELECT max(last_position) AS p FROM event_commit_times"
                " WHERE context = %s AND committed_at < %s",
                (store.context, to_time),
            ).fetchone()
            until = min(until, row["p"] if row and row["p"] is not None else 0)
    if to_position is not None:
        until = min(until, to_position - 1)
    return Window(after, until)


def replay(
    store: EventStore,
    producer: BlockingProducer,
    topic: str,
    selected: Window,
    *,
    types: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[int, int]:
    """Publish the window's events (optionally only some types) in store order.

    Returns (events published, last position read); stopping early returns where it got to.
    """
    position = selected.after
    published = 0
    while position < selected.until and not should_stop():
        notes = store.recorder.select_notifications(
            start=position,
            limit=PAGE,
            stop=selected.until,
            topics=list(types),
            inclusive_of_start=False,
        )
        if not notes:
            position = selected.until
            break
        batch = []
        for n in notes:
            d = decode(n.topic, n.state)
            env = Envelope(
                n.id, n.originator_id, n.originator_version, d.event, d.occurred_at, d.meta
            )
            batch.append(record(store.context, env))
        producer.send_all(topic, batch)
        published += len(batch)
        read = notes[-1].id - position
        position = notes[-1].id
        if progress:
            progress(read, len(batch))
    return published, position
