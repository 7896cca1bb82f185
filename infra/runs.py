"""Leases of long-running commands (the ``runs`` table, migration 0007).

A run row is inserted in the transaction that records the run's acceptance (``run_row``) and
marked done in the one that records its outcome (``done_row``, a fence: it holds only while the
lease is still the finishing worker's). Between the two, workers claim runs whose lease is free
or expired, renew the leases they hold, and hand them back when they stop. A worker with room
claims the runs it accepts in the accepting transaction itself (``run_row`` with ``owner``) and
starts them at once, from what that transaction wrote (``Adopted``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from infra.eventstore import Guarded

if TYPE_CHECKING:
    import uuid

    from eventsourcing.postgres import PostgresDatastore

    from events.stored import DecodedEvent

_INSERT = """
INSERT INTO runs (command_id, context, run_id, command_type, accepted_at, deadline_at,
                  max_tokens)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (command_id) DO NOTHING
"""

_INSERT_CLAIMED = """
INSERT INTO runs (command_id, context, run_id, command_type, accepted_at, deadline_at,
                  max_tokens, state, owner, attempts, lease_until)
VALUES (%s, %s, %s, %s, %s, %s, %s, 'running', %s, 1, now() + make_interval(secs => %s))
ON CONFLICT (command_id) DO NOTHING
"""

_DONE = """
UPDATE runs SET state = 'done', owner = NULL, lease_until = NULL, updated_at = now()
WHERE command_id = %s AND owner = %s AND attempts = %s AND state = 'running'
"""

_CLAIM = """
UPDATE runs r SET state = 'running', owner = %(owner)s, attempts = r.attempts + 1,
       lease_until = now() + make_interval(secs => %(lease_s)s), updated_at = now()
FROM (
    SELECT command_id FROM runs
    WHERE context = %(context)s AND state <> 'done'
      AND (owner IS NULL OR lease_until < now())
      AND (%(ids)s::uuid[] IS NULL OR command_id = ANY(%(ids)s::uuid[]))
    ORDER BY accepted_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) free
WHERE r.command_id = free.command_id
RETURNING r.command_id, r.run_id, r.command_type, r.attempts, r.accepted_at, r.deadline_at,
          r.max_tokens
"""

_RENEW = """
UPDATE runs SET lease_until = now() + make_interval(secs => %s), updated_at = now()
WHERE owner = %s AND state = 'running' AND command_id = ANY(%s::uuid[])
RETURNING command_id
"""

_RELEASE = """
UPDATE runs SET state = 'pending', owner = NULL, lease_until = NULL, updated_at = now()
WHERE owner = %s AND state = 'running' AND command_id = ANY(%s::uuid[])
"""


def run_row(
    context: str,
    command_id: uuid.UUID,
    command_type: str,
    run_id: uuid.UUID,
    *,
    accepted_at: datetime,
    max_wall_s: float | None,
    max_tokens: int | None = None,
    owner: str | None = None,
    lease_s: float = 0.0,
) -> Guarded:
    """The run row of a command accepted as a long-running one (idempotent). With ``owner``,
    claimed by it (attempt 1, a lease of ``lease_s``): only for a run whose acceptance event
    commits in the same transaction, so that the row is surely this insert's."""
    deadline = accepted_at + timedelta(seconds=max_wall_s) if max_wall_s else None
    row = (command_id, context, run_id, command_type, accepted_at, deadline, max_tokens)
    if owner is None:
        return Guarded(_INSERT, row)
    return Guarded(_INSERT_CLAIMED, (*row, owner, lease_s))


@dataclass(frozen=True)
class Claim:
    """A run this worker now holds the lease of."""

    command_id: uuid.UUID
    run_id: uuid.UUID
    command_type: str
    attempt: int
    """1 for the first worker to run it; more after a takeover or a hand-over."""
    accepted_at: datetime
    deadline_at: datetime | None
    max_tokens: int | None = None
    """Its token budget (None: none beyond what the run itself asks for)."""

    def done_row(self, owner: str) -> Guarded:
        """The fence of the run's outcome: it commits only while this claim still holds."""
        return Guarded(_DONE, (self.command_id, owner, self.attempt), expect_rows=1)


@dataclass(frozen=True)
class Adopted:
    """A run claimed in the transaction that accepted it, with its history as written there."""

    claim: Claim
    history: list[DecodedEvent]


class RunLeases:
    """The ``runs`` rows of one context, as one worker (``owner``) sees them."""

    def __init__(self, datastore: PostgresDatastore, context: str, owner: str) -> None:
        self.datastore = datastore
        self.context = context
        self.owner = owner

    def claim(self, limit: int, lease_s: float, ids: list[uuid.UUID] | None = None) -> list[Claim]:
        """Take up to ``limit`` free or expired runs (oldest first; among ``ids`` when given)."""
        if limit <= 0:
            return []
        params = {
            "owner": self.owner,
            "lease_s": lease_s,
            "context": self.context,
            "limit": limit,
            "ids": ids,
        }
        with self.datastore.get_connection() as conn:
            rows = conn.execute(_CLAIM, params).fetchall()
        return [
            Claim(
                command_id=row["command_id"],
                run_id=row["run_id"],
                command_type=row["command_type"],
                attempt=row["attempts"],
                accepted_at=row["accepted_at"],
                deadline_at=row["deadline_at"],
                max_tokens=row["max_tokens"],
            )
            for row in sorted(rows, key=lambda r: r["accepted_at"])
        ]

    def renew(self, ids: list[uuid.UUID], lease_s: float) -> set[uuid.UUID]:
        """Extend the leases of ``ids``; returns those still held (the others were lost)."""
        if not ids:
            return set()
        with self.datastore.get_connection() as conn:
            rows = conn.execute(_RENEW, (lease_s, self.owner, ids)).fetchall()
        return {row["command_id"] for row in rows}

    def release(self, ids: list[uuid.UUID]) -> None:
        """Hand runs back (at once claimable by any worker)."""
        if not ids:
            return
        with self.datastore.get_connection() as conn:
            conn.execute(_RELEASE, (self.owner, ids))
