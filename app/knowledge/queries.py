"""Queries on the documents and chunks read models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg.rows import dict_row

from app.queries import ReadModel, decode_cursor, encode_cursor
from projections.knowledge.vector_rows import VECTOR_DIM

if TYPE_CHECKING:
    from datetime import datetime


@dataclass(frozen=True)
class Filters:
    """What a search is narrowed to: every one given must hold."""

    source: str | None = None
    tags: tuple[str, ...] = ()
    """All of them (a document with more tags matches too)."""
    documents: tuple[str, ...] = ()
    """Any of them."""
    since: datetime | None = None
    until: datetime | None = None
    """The document's last version, ``since <= updated_at < until``."""

    def sql(self, alias: str) -> tuple[str, dict[str, Any]]:
        """`` AND ...`` over the table ``alias`` (documents or chunk_vectors: both have the
        columns), and its parameters."""
        parts: list[str] = []
        params: dict[str, Any] = {}
        if self.source is not None:
            parts.append(f"{alias}.source = %(f_source)s")
            params["f_source"] = self.source
        if self.tags:
            parts.append(f"{alias}.tags @> %(f_tags)s")
            params["f_tags"] = list(self.tags)
        if self.documents:
            parts.append(f"{alias}.document_id = ANY(%(f_documents)s)")
            params["f_documents"] = list(self.documents)
        if self.since is not None:
            parts.append(f"{alias}.updated_at >= %(f_since)s")
            params["f_since"] = self.since
        if self.until is not None:
            parts.append(f"{alias}.updated_at < %(f_until)s")
            params["f_until"] = self.until
        return "".join(f" AND {p}" for p in parts), params

    def key(self) -> str:
        """A stable text of the filters (for cache keys)."""
        return repr(
            (
                self.source,
                self.tags,
                self.documents,
                self.since and self.since.isoformat(),
                self.until and self.until.isoformat(),
            )
        )


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

    async def text_hits(self, q: str, limit: int, filters: Filters) -> list[dict[str, Any]]:
        """Best chunk per document by full-text rank (title weighted above body): the
        ``limit`` best documents, each ``(document_id, chunk_index, rank)``."""
        where, params = filters.sql("d")
        return await self.all_named(
            f"""
            WITH query AS (SELECT websearch_to_tsquery('english', %(q)s) AS q),
            best AS (
                SELECT DISTINCT ON (c.document_id)
                       c.document_id, c.chunk_index, ts_rank_cd(c.search, query.q) AS rank
                FROM chunks c JOIN documents d USING (document_id), query
                WHERE c.search @@ query.q{where}
                ORDER BY c.document_id, rank DESC, c.chunk_index
            )
            SELECT document_id, chunk_index, rank::float8 AS rank
            FROM best ORDER BY rank DESC, document_id LIMIT %(limit)s
            """,
            {"q": q, "limit": limit, **params},
        )

    async def text_chunks(self, q: str, limit: int, filters: Filters) -> list[dict[str, Any]]:
        """The ``limit`` best chunks by full-text rank (several may share a document)."""
        where, params = filters.sql("d")
        return await self.all_named(
            f"""
            WITH query AS (SELECT websearch_to_tsquery('english', %(q)s) AS q)
            SELECT c.document_id, c.chunk_index, ts_rank_cd(c.search, query.q)::float8 AS rank
            FROM chunks c JOIN documents d USING (document_id), query
            WHERE c.search @@ query.q{where}
            ORDER BY rank DESC, c.document_id, c.chunk_index LIMIT %(limit)s
            """,
            {"q": q, "limit": limit, **params},
        )

    async def vector_chunks(
        self,
        vector: list[float],
        model: str,
        limit: int,
        filters: Filters,
        *,
        ef_search: int,
        exact: bool = False,
    ) -> list[dict[str, Any]]:
        """The ``limit`` chunks nearest ``vector`` (cosine distance) among ``model``'s.

        HNSW with iterative scans, so filters do not starve it; when it still finds fewer than
        ``limit`` (a filter matching few rows far from the query), an exact scan answers, so a
        filtered search never returns fewer hits than there are matches."""
        where, params = filters.sql("v")
        literal = "[" + ",".join(f"{x:.6g}" for x in vector) + "]"
        sql = f"""
            SELECT v.document_id, v.chunk_index,
                   (v.embedding <=> %(v)s::halfvec({VECTOR_DIM}))::float8 AS distance
            FROM chunk_vectors v
            WHERE v.model = %(model)s{where}
            ORDER BY v.embedding <=> %(v)s::halfvec({VECTOR_DIM}) LIMIT %(limit)s
            """
        params = {"v": literal, "model": model, "limit": limit, **params}
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            if exact:
                await cur.execute(b"SET LOCAL enable_indexscan = off")
            else:
                await cur.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}".encode())
                await cur.execute(b"SET LOCAL hnsw.iterative_scan = relaxed_order")
            await cur.execute(sql.encode(), params)
            rows: list[dict[str, Any]] = await cur.fetchall()
        if len(rows) < limit and not exact:
            return await self.vector_chunks(
                vector, model, limit, filters, ef_search=ef_search, exact=True
            )
        # Iterative scans may return neighbours slightly out of order.
        rows.sort(key=lambda r: (r["distance"], r["document_id"], r["chunk_index"]))
        return rows

    async def chunk_details(
        self, q: str, keys: list[tuple[str, int]]
    ) -> dict[tuple[str, int], dict[str, Any]]:
        """Citation and snippet of each chunk: title, version, offsets, highlighted text."""
        if not keys:
            return {}
        rows = await self.all_named(
            """
            WITH query AS (SELECT websearch_to_tsquery('english', %(q)s) AS q)
            SELECT c.document_id, c.chunk_index, c.version, c.title,
                   c.start_offset AS start, c.end_offset AS end,
                   ts_headline('english', c.text, query.q,
                               'StartSel=<mark>, StopSel=</mark>, MaxFragments=2, MaxWords=30')
                       AS snippet
            FROM chunks c JOIN unnest(%(ids)s::text[], %(idx)s::int[]) AS k(d, i)
                ON c.document_id = k.d AND c.chunk_index = k.i, query
            """,
            {"q": q, "ids": [k[0] for k in keys], "idx": [k[1] for k in keys]},
        )
        return {(r["document_id"], r["chunk_index"]): r for r in rows}
