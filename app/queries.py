"""Read-model queries (the query side). Reads only; every write goes through Kafka."""

from __future__ import annotations

import base64
import uuid
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg_pool import AsyncConnectionPool


class BadCursorError(ValueError):
    """Raised when a paging cursor was not produced by this API."""


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
        value = raw.decode()
    except (ValueError, UnicodeDecodeError):
        raise BadCursorError("invalid cursor") from None
    if not value or "\x00" in value:
        raise BadCursorError("invalid cursor")
    return value


class ReadModel:
    """Queries on the read models through one pool."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def all(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql.encode(), params)
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def all_named(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql.encode(), params)
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        rows = await self.all(sql, params)
        return rows[0] if rows else None


class Queries(ReadModel):
    """The platform's queries: commands' lifecycles and the event stores' heads.

    ``outcome_tables``: every context's command outcomes (each a projection of its own event
    store), read as one.
    """

    def __init__(self, pool: AsyncConnectionPool[Any], outcome_tables: Sequence[str]) -> None:
        super().__init__(pool)
        self.outcomes = "(" + " UNION ALL ".join(f"SELECT * FROM {t}" for t in outcome_tables) + ")"

    async def command(
        self, command_id: uuid.UUID, *, actor: str | None = None
    ) -> dict[str, Any] | None:
        """One command's lifecycle; with ``actor``, only if that principal sent it."""
        return await self.one(
            f"""
            SELECT COALESCE(o.command_id, l.command_id) AS command_id,
                   COALESCE(o.context, l.context) AS context,
                   COALESCE(o.command_type, l.command_type) AS command_type,
                   COALESCE(o.status, l.state,
                            CASE WHEN l.started_at IS NULL THEN 'accepted' ELSE 'processing' END)
                       AS status,
                   l.accepted_at, l.started_at, l.last_attempt_at, o.recorded_at AS finished_at,
                   COALESCE(l.attempts, 0) AS attempts, o.code, o.reason, o.detail,
                   o.aggregate_id, o.position, o.correlation_id,
                   COALESCE(o.actor, l.actor) AS actor,
                   CASE WHEN o.status IS NULL THEN l.next_attempt_at END AS next_attempt_at,
                   l.last_error, COALESCE(l.attempt_history, '[]') AS attempt_history
            FROM {self.outcomes} o FULL JOIN command_log l USING (command_id)
            WHERE COALESCE(o.command_id, l.command_id) = %s
              AND (%s::text IS NULL OR split_part(COALESCE(o.actor, l.actor), '/', 1) = %s)
            """,
            (command_id, actor, actor),
        )

    async def commands(
        self, cursor: str | None, limit: int, *, actor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first: command ids are UUIDv7, so id order is time order.

        With ``actor``, only the commands that principal sent.
        """
        before = uuid.UUID(decode_cursor(cursor)) if cursor else uuid.UUID(int=(1 << 128) - 1)
        rows = await self.all(
            f"""
            WITH ids AS (
                (SELECT command_id FROM command_log WHERE command_id < %s
                 AND (%s::text IS NULL OR split_part(actor, '/', 1) = %s)
                 ORDER BY command_id DESC LIMIT %s)
                UNION
                (SELECT command_id FROM {self.outcomes} WHERE command_id < %s
                 AND (%s::text IS NULL OR split_part(actor, '/', 1) = %s)
                 ORDER BY command_id DESC LIMIT %s)
            ),
            page AS (SELECT command_id FROM ids ORDER BY command_id DESC LIMIT %s)
            SELECT page.command_id,
                   COALESCE(o.context, l.context) AS context,
                   COALESCE(o.command_type, l.command_type) AS command_type,
                   COALESCE(o.status,
                            CASE WHEN l.started_at IS NULL THEN 'accepted' ELSE 'processing' END)
                       AS status,
                   l.accepted_at, o.recorded_at AS finished_at, o.code, o.reason, o.position
            FROM page
            LEFT JOIN {self.outcomes} o USING (command_id)
            LEFT JOIN command_log l USING (command_id)
            ORDER BY page.command_id DESC
            """,
            (before, actor, actor, limit + 1, before, actor, actor, limit + 1, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(str(rows[-1]["command_id"])) if more else None

    async def head(self, context: str) -> int:
        """The last position of a context's event store."""
        row = await self.one(
            f'SELECT coalesce(max(notification_id), 0) AS head FROM "{context}_events"', ()
        )
        return int(row["head"]) if row else 0

    async def log_accepted(
        self,
        command_id: uuid.UUID,
        context: str,
        command_type: str,
        accepted_at: Any,
        actor: str | None = None,
    ) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO command_log (command_id, context, command_type, accepted_at, actor)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (command_id) DO NOTHING",
                (command_id, context, command_type, accepted_at, actor),
            )
