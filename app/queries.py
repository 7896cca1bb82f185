"""Read-model queries (the query side). Reads only; every write goes through Kafka."""

from __future__ import annotations

import base64
import uuid
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from projections.command_outcomes import OUTCOME_TABLES

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool


# Every context's outcome table, read as one (each is a projection of its own event store).
OUTCOMES = "(" + " UNION ALL ".join(f"SELECT * FROM {t}" for t in OUTCOME_TABLES) + ")"


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


class Queries:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    async def _all(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(sql.encode(), params)
            rows: list[dict[str, Any]] = await cur.fetchall()
            return rows

    async def _one(self, sql: str, params: tuple[Any, ...]) -> dict[str, Any] | None:
        rows = await self._all(sql, params)
        return rows[0] if rows else None

    async def document(self, document_id: str, *, with_chunks: bool) -> dict[str, Any] | None:
        doc = await self._one(
            "SELECT document_id, version, title, source, tags, text, size_bytes, content_sha256,"
            " chunk_count, created_at, updated_at, position FROM documents WHERE document_id = %s",
            (document_id,),
        )
        if doc is not None and with_chunks:
            doc["chunks"] = await self._all(
                "SELECT chunk_index AS index, start_offset AS start, end_offset AS end, text"
                " FROM chunks WHERE document_id = %s ORDER BY chunk_index",
                (document_id,),
            )
        return doc

    async def documents(
        self, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        after = decode_cursor(cursor) if cursor else ""
        rows = await self._all(
            "SELECT document_id, version, title, source, tags, size_bytes, chunk_count,"
            " created_at, updated_at, position FROM documents"
            " WHERE document_id > %s ORDER BY document_id LIMIT %s",
            (after, limit + 1),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]["document_id"]) if more else None

    async def search(self, q: str, limit: int) -> list[dict[str, Any]]:
        """Best chunk per document, ranked (title weighted above body), with a snippet."""
        return await self._all(
            """
            WITH query AS (SELECT websearch_to_tsquery('english', %s) AS q),
            best AS (
                SELECT DISTINCT ON (c.document_id)
                       c.document_id, c.chunk_index, c.title, c.text,
                       ts_rank_cd(c.search, query.q) AS rank
                FROM chunks c, query
                WHERE c.search @@ query.q
                ORDER BY c.document_id, rank DESC, c.chunk_index
            ),
            top AS (SELECT * FROM best ORDER BY rank DESC, document_id LIMIT %s)
            SELECT top.document_id, top.title, top.chunk_index, top.rank::float8 AS rank,
                   ts_headline('english', top.text, query.q,
                               'StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MaxWords=30')
                       AS snippet
            FROM top, query
            ORDER BY top.rank DESC, top.document_id
            """,
            (q, limit),
        )

    async def command(
        self, command_id: uuid.UUID, *, actor: str | None = None
    ) -> dict[str, Any] | None:
        """One command's lifecycle; with ``actor``, only if that principal sent it."""
        return await self._one(
            f"""
            SELECT COALESCE(o.command_id, l.command_id) AS command_id,
                   COALESCE(o.context, l.context) AS context,
                   COALESCE(o.command_type, l.command_type) AS command_type,
                   COALESCE(o.status,
                            CASE WHEN l.started_at IS NULL THEN 'accepted' ELSE 'processing' END)
                       AS status,
                   l.accepted_at, l.started_at, l.last_attempt_at, o.recorded_at AS finished_at,
                   COALESCE(l.attempts, 0) AS attempts, o.code, o.reason, o.detail,
                   o.aggregate_id, o.position, o.correlation_id,
                   COALESCE(o.actor, l.actor) AS actor
            FROM {OUTCOMES} o FULL JOIN command_log l USING (command_id)
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
        rows = await self._all(
            f"""
            WITH ids AS (
                (SELECT command_id FROM command_log WHERE command_id < %s
                 AND (%s::text IS NULL OR split_part(actor, '/', 1) = %s)
                 ORDER BY command_id DESC LIMIT %s)
                UNION
                (SELECT command_id FROM {OUTCOMES} WHERE command_id < %s
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
            LEFT JOIN {OUTCOMES} o USING (command_id)
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
        row = await self._one(
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
