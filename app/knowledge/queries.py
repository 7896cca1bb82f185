"""Queries on the documents and chunks read models."""

from __future__ import annotations

from typing import Any

from app.queries import ReadModel, decode_cursor, encode_cursor


class DocumentQueries(ReadModel):
    async def document(self, document_id: str, *, with_chunks: bool) -> dict[str, Any] | None:
        doc = await self.one(
            "SELECT document_id, version, title, source, tags, text, size_bytes, content_sha256,"
            " chunk_count, created_at, updated_at, position FROM documents WHERE document_id = %s",
            (document_id,),
        )
        if doc is not None and with_chunks:
            doc["chunks"] = await self.all(
                "SELECT chunk_index AS index, start_offset AS start, end_offset AS end, text"
                " FROM chunks WHERE document_id = %s ORDER BY chunk_index",
                (document_id,),
            )
        return doc

    async def documents(
        self, cursor: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        after = decode_cursor(cursor) if cursor else ""
        rows = await self.all(
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
        return await self.all(
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
