"""Operate the dead letters through their PostgreSQL index: list, show, redrive, purge.

Used by ``uait dlq`` and ``/v1/admin/dlq``. A dead letter is an operational state, not an
outcome: a redrive puts the record back onto its original topic, once, with fresh attempts, and
the command can still get its one outcome. A command that already has an outcome is not
redriven (a rejected one must be re-issued as a new command).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier

from events.ids import command_aggregate_id
from events.jobs import REDRIVE_OF_HEADER, WORKER_HEADERS
from events.topics import command_topic, dead_letter_topic
from telemetry.metrics import DLQ_SIZE

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Sequence

    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_age(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d``, ``2w`` -> a timedelta; ValueError otherwise."""
    match = _AGE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 30m, 12h, 7d or 2w")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_since(text: str) -> datetime:
    """An ISO 8601 time (UTC when it has no offset), or an age meaning that long ago."""
    try:
        return datetime.now(UTC) - parse_age(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time nor an age like 12h") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class DeadLetterNotFoundError(LookupError):
    """Raised when no dead letter has the given id."""


class RedriveRefusedError(RuntimeError):
    """Raised when a dead letter cannot be redriven (already redriven, or the command is done)."""


class Sender(Protocol):
    async def send_raw(
        self, topic: str, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> Any: ...


_SUMMARY = (
    "id, command_id, context, command_type, topic, kafka_partition, kafka_offset, dlq_topic,"
    " dlq_partition, dlq_offset, error_type, error_message, traceback_digest, attempts,"
    " first_failure_at, last_failure_at, dead_lettered_at, redriven_at"
)


class DeadLetters:
    """The dead letters of ``contexts``' command topics."""

    def __init__(self, pool: AsyncConnectionPool[Any], contexts: Sequence[str]) -> None:
        self.pool = pool
        self.contexts = tuple(contexts)

    async def find(
        self,
        *,
        topic: str | None = None,
        since: datetime | None = None,
        include_redriven: bool = False,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Newest first; ``topic`` is the original topic (or its ``.dlq``)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_SUMMARY} FROM dead_letters"
                " WHERE (%(topic)s::text IS NULL OR topic = %(topic)s OR dlq_topic = %(topic)s)"
                " AND (%(since)s::timestamptz IS NULL OR dead_lettered_at >= %(since)s)"
                " AND (%(all)s OR redriven_at IS NULL)"
                " ORDER BY dead_lettered_at DESC, id DESC LIMIT %(limit)s",
                {"topic": topic, "since": since, "all": include_redriven, "limit": limit},
            )
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def get(self, dead_letter_id: uuid.UUID) -> dict[str, Any]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {_SUMMARY}, headers, traceback, record_key, record_value"
                " FROM dead_letters WHERE id = %s",
                (dead_letter_id,),
            )
            row = await cur.fetchone()
        if row is None:
            raise DeadLetterNotFoundError(f"no dead letter {dead_letter_id}")
        row = dict(row)
        key, value = row.pop("record_key"), row.pop("record_value")
        row["key"] = bytes(key).decode("utf-8", "replace") if key is not None else None
        row["value"] = bytes(value).decode("utf-8", "replace")
        return row

    async def redrive(self, dead_letter_id: uuid.UUID, sender: Sender) -> dict[str, Any]:
        """Put one dead letter back onto its original topic; refused if it cannot be."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT id, command_id, context, topic, record_key, record_value, headers,"
                " redriven_at FROM dead_letters WHERE id = %s FOR UPDATE",
                (dead_letter_id,),
            )
            row = await cur.fetchone()
            if row is None:
                raise DeadLetterNotFoundError(f"no dead letter {dead_letter_id}")
            if row["redriven_at"] is not None:
                raise RedriveRefusedError(
                    f"dead letter {dead_letter_id} was already redriven at "
                    f"{row['redriven_at'].isoformat()}; a dead letter is redriven once"
                )
            outcome = await _outcome(conn, self.contexts, row["context"], row["command_id"])
            if outcome == "CommandRejected":
                raise RedriveRefusedError(
                    f"command {row['command_id']} already has a rejected outcome; re-issue it "
                    "as a new command instead"
                )
            if outcome is not None:
                raise RedriveRefusedError(f"command {row['command_id']} already succeeded")
            headers = [
                (k, str(v).encode()) for k, v in row["headers"].items() if k not in WORKER_HEADERS
            ]
            headers.append((REDRIVE_OF_HEADER, str(dead_letter_id).encode()))
            key = bytes(row["record_key"]) if row["record_key"] is not None else None
            # Published inside the transaction: if the broker refuses, nothing is marked.
            await sender.send_raw(row["topic"], bytes(row["record_value"]), key, headers)
            await cur.execute(
                "UPDATE dead_letters SET redriven_at = now() WHERE id = %s RETURNING redriven_at",
                (dead_letter_id,),
            )
            done = await cur.fetchone()
            await cur.execute(
                "UPDATE command_log SET state = NULL, next_attempt_at = NULL WHERE command_id = %s",
                (row["command_id"],),
            )
        await self.observe_size()
        return {
            "id": dead_letter_id,
            "command_id": row["command_id"],
            "topic": row["topic"],
            "redriven_at": done["redriven_at"] if done else None,
        }

    async def redrive_many(
        self,
        sender: Sender,
        *,
        topic: str | None = None,
        on_each: Callable[[uuid.UUID, str | None], None] | None = None,
    ) -> tuple[list[uuid.UUID], dict[uuid.UUID, str]]:
        """Redrive every open dead letter (of ``topic``); returns (redriven, refused: why)."""
        done: list[uuid.UUID] = []
        refused: dict[uuid.UUID, str] = {}
        rows = await self.find(topic=topic, limit=1_000_000)
        for row in reversed(rows):  # oldest first: the original order of the commands
            try:
                await self.redrive(row["id"], sender)
                done.append(row["id"])
                error = None
            except (RedriveRefusedError, DeadLetterNotFoundError) as exc:
                refused[row["id"]] = error = str(exc)
            if on_each is not None:
                on_each(row["id"], error)
        return done, refused

    async def purge(self, older_than: timedelta) -> int:
        """Delete index rows dead-lettered longer ago than ``older_than`` (the topic keeps its
        records until its retention removes them)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM dead_letters WHERE dead_lettered_at < now() - %s", (older_than,)
            )
            count = int(cur.rowcount)
        await self.observe_size()
        return count

    async def observe_size(self) -> None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT dlq_topic, count(*) FILTER (WHERE redriven_at IS NULL)"
                " FROM dead_letters GROUP BY dlq_topic"
            )
            sizes = {dead_letter_topic(command_topic(c)): 0 for c in self.contexts}
            sizes.update({topic: size for topic, size in await cur.fetchall()})
        for topic, size in sizes.items():
            DLQ_SIZE.labels(topic).set(size)


async def _outcome(
    conn: AsyncConnection[Any], contexts: Sequence[str], context: str, command_id: uuid.UUID
) -> str | None:
    """The type of the command's outcome in the event store (authoritative), if it has one."""
    if context not in contexts:
        return None
    query = SQL("SELECT topic FROM {} WHERE originator_id = %s AND originator_version = 1").format(
        Identifier(f"{context}_events")
    )
    cur = await conn.execute(query, (command_aggregate_id(command_id),))
    row = await cur.fetchone()
    return None if row is None else str(row[0] if not isinstance(row, dict) else row["topic"])
