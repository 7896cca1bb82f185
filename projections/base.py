"""What a projection is: one read model, its schema and its handlers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from datetime import datetime

    from psycopg import Cursor

    from events.base import Event


class TransientProjectionError(RuntimeError):
    """Raised by ``apply`` when an outside system (Redis, a broker) is unavailable.

    The runner backs off and retries the batch, as it does when the database is down; the
    projection is never marked failed for it, since the event itself is fine.
    """


@dataclass(frozen=True)
class Envelope:
    """A stored event as a projection sees it: position, stream and decoded payload."""

    position: int
    aggregate_id: Any
    aggregate_version: int
    event: Event
    occurred_at: datetime
    meta: dict[str, Any]


class Projection(Protocol):
    """A read model built from one context's events.

    ``apply`` gets many events at once and writes them with set-based SQL; the runner commits
    the rows and the tracking position in the same transaction. Events a projection does not
    handle are skipped, but their positions are still recorded.
    """

    @property
    def name(self) -> str: ...

    @property
    def context(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def tables(self) -> tuple[str, ...]: ...

    @property
    def topics(self) -> frozenset[str]:
        """The event types it handles; others are skipped without being decoded."""
        ...

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        """Create the tables, and unless told otherwise their secondary indexes (idempotent)."""

    def create_indexes(self, cur: Cursor[Any]) -> None:
        """Create the secondary indexes (a rebuild does this after its bulk load)."""

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        """Write the effects of ``batch`` (in store order) to the read model."""


@runtime_checkable
class BulkLoadable(Projection, Protocol):
    """A projection with a faster way to be rebuilt than applying its history batch by batch.

    ``create(bulk=True)`` makes staging tables (UNLOGGED, no secondary indexes), ``stage``
    fills them by COPY, and ``seal`` builds from them, once, exactly the tables and rows that
    ``create`` and ``apply`` would have made. A rebuild of any other projection applies pages.
    """

    def create(self, cur: Cursor[Any], *, indexes: bool = True, bulk: bool = False) -> None: ...

    def stage(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        """Bulk-load ``batch`` (in store order) into the staging tables."""

    def seal(self, cur: Cursor[Any]) -> None:
        """Build the live tables (logged, indexed) from the staging tables, once."""
