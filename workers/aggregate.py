"""The aggregate base: decide, then record; state changes only by applying events."""

from __future__ import annotations

from typing import TYPE_CHECKING, Self

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

    def __init__(self, aggregate_id: uuid.UUID) -> None:
        self.id = aggregate_id
        self.version = 0
        self.pending: list[tuple[int, Event]] = []

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
