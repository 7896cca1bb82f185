"""What a batch is made of: consumed records, the commands parsed from them, the deferrals for
the retry path, and the report of a decided batch."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from events.jobs import FAILURES_HEADER
from events.stored import EventMeta
from infra.policies import JobPolicy

if TYPE_CHECKING:
    import uuid
    from datetime import datetime

    from events.base import Command
    from events.envelope import Envelope
    from events.outcomes import RejectionCode
    from infra.runs import Adopted


class ConcurrencyConflictError(RuntimeError):
    """Raised when a command keeps conflicting with another writer after every retry."""


@dataclass(frozen=True)
class Record:
    """A consumed Kafka record, independent of the client library."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    trace_context: str | None = None
    """W3C traceparent of the span processing this record (kept in the events' metadata)."""
    headers: tuple[tuple[str, bytes], ...] = ()

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass
class Item:
    record: Record
    command_id: uuid.UUID
    envelope: Envelope | None = None
    command: Command | None = None
    rejection: tuple[RejectionCode, str] | None = None
    policy: JobPolicy = field(default_factory=JobPolicy)

    @property
    def type(self) -> str:
        return self.envelope.type if self.envelope else "unknown"

    @property
    def key(self) -> str | None:
        """The aggregate this record is keyed by (its Kafka key), for parking."""
        return self.record.key.decode("utf-8", "replace") if self.record.key else None

    @property
    def failures(self) -> int:
        """Executions that failed transiently before this one (from the retry headers)."""
        raw = self.record.header(FAILURES_HEADER)
        try:
            return max(int(raw), 0) if raw else 0
        except ValueError:
            return 0

    def meta(self) -> EventMeta:
        env = self.envelope
        return EventMeta(
            command_id=self.command_id,
            correlation_id=env.correlation_id if env else self.command_id,
            actor=env.actor if env else "unknown",
            traceparent=self.record.trace_context,
        )


@dataclass(frozen=True)
class Deferral:
    """A command left without an outcome, for the retry path (or, past its attempts, the DLQ).

    ``error_type`` is empty when it did not run at all: its aggregate was parked behind an
    earlier command still in the retry path.
    """

    item: Item
    failed_at: datetime
    error_type: str = ""
    error: str = ""
    traceback: str = ""

    @property
    def ran(self) -> bool:
        return bool(self.error_type)


@dataclass
class BatchReport:
    succeeded: int = 0
    rejected: int = 0
    duplicates: int = 0
    accepted: int = 0
    """Long-running commands accepted as runs (their outcome comes when the run ends)."""
    runs: list[uuid.UUID] = field(default_factory=list)
    """The command ids of those runs, in order."""
    adopted: list[Adopted] = field(default_factory=list)
    """Those of them this worker claimed as it accepted them (it starts them itself)."""
    splits: int = 0
    appended_events: int = 0
    outcomes: dict[uuid.UUID, str] = field(default_factory=dict)
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(command type, result) -> count, for metrics."""
    appends: dict[uuid.UUID, tuple[int, int]] = field(default_factory=dict)
    """command id -> (start, end) in ns since the epoch of the append that recorded it."""
    deferred: list[Deferral] = field(default_factory=list)
    released: list[tuple[str, uuid.UUID]] = field(default_factory=list)
    """(aggregate key, command id) of parked commands that now have their outcome."""

    def count(self, item: Item, result: str) -> None:
        if result == "succeeded":
            self.succeeded += 1
        elif result == "rejected":
            self.rejected += 1
        elif result == "accepted":
            self.accepted += 1
            self.runs.append(item.command_id)
        else:
            self.duplicates += 1
        self.outcomes[item.command_id] = result
        self.by_type[(item.type, result)] += 1

    def merge(self, other: BatchReport) -> None:
        self.succeeded += other.succeeded
        self.rejected += other.rejected
        self.duplicates += other.duplicates
        self.accepted += other.accepted
        self.runs.extend(other.runs)
        self.adopted.extend(other.adopted)
        self.splits += other.splits
        self.appended_events += other.appended_events
        self.outcomes.update(other.outcomes)
        self.by_type.update(other.by_type)
        self.appends.update(other.appends)
        self.deferred.extend(other.deferred)
        self.released.extend(other.released)
