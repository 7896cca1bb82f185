"""Aggregate snapshots, kept in the library's snapshot table (``<context>_snapshots``).

A snapshot is an aggregate's state at a version. It is taken when an append carries an
aggregate across a multiple of its type's interval (``UAIT_SNAPSHOT_EVERY``, e.g.
``{"Document": 50}``), in the same transaction as that append, so it never describes events
that were not stored. Loading starts from the latest usable snapshot and replays only the events
after it.

Snapshots are not events of the context's history: they live in their own table, as the
``eventsourcing`` library keeps them, and projections, the relay, replay and export read only
the events table, so none of them ever sees a snapshot.

Stored as orjson ``{"v": snapshot version, "at": time, "state": {...}}`` under the aggregate's
type name. A snapshot of another shape of the aggregate (its ``SNAPSHOT_VERSION`` changed since)
or of an unknown type is ignored, never upcast: the aggregate then loads from its full history
(whose events do go through the event upcasters), and the next snapshot is taken in the current
shape. Snapshots are a cache of the events, so ignoring one costs time, never correctness.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from eventsourcing.persistence import StoredEvent

from workers.aggregate import Aggregate, aggregate_types

if TYPE_CHECKING:
    import uuid
    from collections.abc import Mapping

    from events.base import Event
    from workers.aggregate import AggregateT


class UnknownAggregateTypeError(LookupError):
    """Raised when the snapshot setting names an aggregate type that does not exist or that
    has no snapshot form."""


@dataclass(frozen=True)
class Snapshot:
    type: str
    version: int
    state: dict[str, Any]


@dataclass
class Stream:
    """What loading an aggregate needs: its latest usable snapshot and the events after it."""

    snapshot: Snapshot | None = None
    events: list[Event] = field(default_factory=list)

    def replay(self, aggregate_id: uuid.UUID, cls: type[AggregateT]) -> AggregateT:
        if self.snapshot is None:
            return cls.replay(aggregate_id, self.events)
        if self.snapshot.type != cls.__name__:
            raise TypeError(
                f"aggregate {aggregate_id} has a {self.snapshot.type} snapshot, not {cls.__name__}"
            )
        aggregate = cls.from_snapshot(aggregate_id, self.snapshot.version, self.snapshot.state)
        for event in self.events:
            aggregate.apply(event)
            aggregate.version += 1
        return aggregate


def check_intervals(every: Mapping[str, int]) -> dict[str, int]:
    known = aggregate_types()
    unknown = sorted(set(every) - set(known))
    if unknown:
        raise UnknownAggregateTypeError(
            f"UAIT_SNAPSHOT_EVERY names unknown aggregate type(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    unable = sorted(name for name in every if known[name].SNAPSHOT_VERSION is None)
    if unable:
        raise UnknownAggregateTypeError(
            f"UAIT_SNAPSHOT_EVERY names aggregate type(s) without a snapshot form: "
            f"{', '.join(unable)} (they set no SNAPSHOT_VERSION)"
        )
    bad = {name: n for name, n in every.items() if n < 1}
    if bad:
        raise ValueError(f"UAIT_SNAPSHOT_EVERY intervals must be at least 1, got {bad}")
    return dict(every)


def due(aggregate: Aggregate, new_events: int, every: Mapping[str, int]) -> bool:
    """Whether the append of ``new_events`` carried the aggregate across a multiple of N."""
    n = every.get(type(aggregate).__name__)
    if not n or new_events < 1:
        return False
    return aggregate.version // n > (aggregate.version - new_events) // n


def encode(aggregate: Aggregate) -> StoredEvent:
    state = {"v": aggregate.SNAPSHOT_VERSION, "at": datetime.now(UTC), "state": aggregate.state()}
    return StoredEvent(
        aggregate.id, aggregate.version, type(aggregate).__name__, orjson.dumps(state)
    )


def decode(topic: str, version: int, state: bytes) -> Snapshot | None:
    """The snapshot, or None when this code cannot use it (see the module docstring)."""
    cls = aggregate_types().get(topic)
    if cls is None or cls.SNAPSHOT_VERSION is None:
        return None
    raw = orjson.loads(state)
    if raw.get("v") != cls.SNAPSHOT_VERSION:
        return None
    return Snapshot(topic, version, raw["state"])
