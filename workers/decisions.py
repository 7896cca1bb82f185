"""What a context plugs into the worker: a decider, which names the streams a command needs and
records its events on the aggregates of those streams, and the verdict it gives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar

from workers.aggregate import Aggregate

if TYPE_CHECKING:
    import uuid
    from collections.abc import Sequence

    from events.base import Command

AggregateT = TypeVar("AggregateT", bound=Aggregate)


@dataclass(frozen=True)
class RunStart:
    """A command accepted as a long-running one: its run records the outcome when it ends."""

    run_id: uuid.UUID
    """The aggregate its run records its steps and result on."""
    max_wall_s: float | None = None
    """Its wall-time budget (the runtime's default when None)."""
    max_tokens: int | None = None
    """Its token budget, enforced by the runtime (None: none)."""


@dataclass(frozen=True)
class Verdict:
    """What a decider says about a command that it accepted."""

    aggregate_id: uuid.UUID | None
    detail: str = ""
    run: RunStart | None = None
    """Set for a long-running command: no outcome now, a run row in the same transaction."""


class Streams(Protocol):
    def get(self, aggregate_id: uuid.UUID, cls: type[AggregateT]) -> AggregateT: ...


class Decider(Protocol):
    """A context's decision logic: which streams a command needs, and what it records."""

    @property
    def context(self) -> str: ...

    @property
    def commands(self) -> frozenset[type[Command]]:
        """The command types it decides (any other is a programming error)."""
        ...

    def stream_ids(self, command: Command) -> list[uuid.UUID]: ...

    def decide(self, command: Command, streams: Streams) -> Verdict:
        """Record events on aggregates from ``streams``; raise DomainRuleError to reject."""
        ...


class Preparing(Decider, Protocol):
    """A decider that looks at a batch's commands before deciding them one by one (to batch an
    external call across them). A failure there is its own to absorb: the decisions still run."""

    def prepare(self, commands: Sequence[Command], streams: Streams) -> None: ...
