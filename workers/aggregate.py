"""The aggregate base: decide, then record; state changes only by applying events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

if TYPE_CHECKING:
    import uuid
    from collections.abc import Iterable

    from events.base import Event
    from events.outcomes import RejectionCode


class DomainRuleError(Exception):
    """Raised by an aggregate when a command breaks a business rule (a permanent rejection)."""

    code: RejectionCode = "domain"


class Aggregate:
    """A consistency boundary with an event stream; ``version`` is its last stored position."""

    SNAPSHOT_VERSION: ClassVar[int | None] = None
    """The shape of ``state()``, for a type that can be snapshotted (None: it cannot). Bump it
    when that shape changes, and older snapshots are ignored."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _types[cls.__name__] = cls

    def __init__(self, aggregate_id: uuid.UUID) -> None:
        self.id = aggregate_id
        self.version = 0
        self.pending: list[tuple[int, Event]] = []

    def state(self) -> dict[str, Any]:
        """What a snapshot keeps: every attribute that applying events sets.

        The default suits attributes with JSON values (str, int, bool, lists, dicts); a type
        with others (sets, datetimes) overrides this and ``from_snapshot``.
        """
        return {k: v for k, v in vars(self).items() if k not in ("id", "version", "pending")}

    @classmethod
    def from_snapshot(cls, aggregate_id: uuid.UUID, version: int, state: dict[str, Any]) -> Self:
        aggregate = cls(aggregate_id)
        vars(aggregate).update(state)
        aggregate.version = version
        return aggregate

    @classmethod
    def replay(cls, aggregate_id: uuid.UUID, history: Iterable[Event]) -> Self:
        aggregate = cls(aggregate_id)
        for event in history:
            aggregate.apply(event)
            aggregate.version += 1
        return aggregate

    def apply(self, event: Event) -> None:
        raise NotImplementedError

    def record(self, event: Event) -> None:
        self.apply(event)
        self.version += 1
        self.pending.append((self.version, event))


AggregateT = TypeVar("AggregateT", bound=Aggregate)

_types: dict[str, type[Aggregate]] = {}


def aggregate_types() -> dict[str, type[Aggregate]]:
    """Every aggregate class by name (the name snapshots are stored under)."""
    return dict(_types)
