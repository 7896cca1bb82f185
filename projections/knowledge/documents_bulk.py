"""The bulk load of ``documents`` and ``chunks`` for a rebuild: stage every version, keep the last.

Applying history version by version updates each document row and rewrites its chunks (and their
search vectors) once per version ever stored. A rebuild only needs the final rows, so it appends
each event to one UNLOGGED staging table (no index, no update, no delete) and, once caught up,
builds the tables in three set-based statements that give exactly what ``apply`` would:

- a document's row is its last event, when that is an ingest (a deletion leaves no row);
- ``created_at`` is the time of the first ingest after its last deletion (or ever);
- its chunks are the spans of the last version's text (``substr`` counts characters, as
  Python slicing does), and their search vectors are computed once, by the generated column;
- its chunks' embeddings are the last version's (staged in pgvector's text form).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from events.knowledge.events import DocumentDeleted, DocumentIngested
from projections.knowledge.vector_rows import vector_rows

if TYPE_CHECKING:
    from psycopg import Cursor

    from projections.base import Envelope

STAGING = """
CREATE UNLOGGED TABLE IF NOT EXISTS documents_staged (
    position       bigint NOT NULL,
    ingested       boolean NOT NULL,
    document_id    text NOT NULL,
    aggregate_id   uuid,
    version        integer,
    title          text,
    source         text,
    tags           text[],
    text           text,
    size_bytes     integer,
    content_sha256 text,
    chunk_index    integer[],
    chunk_start    integer[],
    chunk_end      integer[],
    occurred_at    timestamptz NOT NULL,
    model          text,
    vectors        text[]
);
"""
STAGED_TYPES = (
    "int8",
    "bool",
    "text",
    "uuid",
    "int4",
    "text",
    "text",
    "text[]",
    "text",
    "int4",
    "text",
    "int4[]",
    "int4[]",
    "int4[]",
    "timestamptz",
    "text",
    "text[]",
)

FINAL = """
CREATE UNLOGGED TABLE documents_final AS
WITH life AS (
    SELECT document_id, max(position) AS last,
           coalesce(max(position) FILTER (WHERE NOT ingested), 0) AS deleted
    FROM documents_staged GROUP BY document_id
),
born AS (
    SELECT DISTINCT ON (s.document_id) s.document_id, s.occurred_at AS created_at
    FROM documents_staged s JOIN life l USING (document_id)
    WHERE s.ingested AND s.position > l.deleted
    ORDER BY s.document_id, s.position
)
SELECT s.*, b.created_at
FROM documents_staged s
JOIN life l ON l.document_id = s.document_id AND l.last = s.position
JOIN born b ON b.document_id = s.document_id
WHERE s.ingested
"""
DOCUMENTS = """
INSERT INTO documents (document_id, aggregate_id, version, title, source, tags, text,
    size_bytes, content_sha256, chunk_count, created_at, updated_at, position)
SELECT document_id, aggregate_id, version, title, source, tags, text, size_bytes,
    content_sha256, cardinality(chunk_index), created_at, occurred_at, position
FROM documents_final
"""
CHUNKS = """
INSERT INTO chunks (document_id, chunk_index, version, title, text, start_offset, end_offset)
SELECT f.document_id, c.i, f.version, f.title, substr(f.text, c.s + 1, greatest(c.e - c.s, 0)),
    c.s, c.e
FROM documents_final f, unnest(f.chunk_index, f.chunk_start, f.chunk_end) AS c(i, s, e)
"""
VECTORS = """
INSERT INTO chunk_vectors (document_id, chunk_index, version, model, source, tags, updated_at,
    embedding)
SELECT f.document_id, v.i, f.version, f.model, f.source, f.tags, f.occurred_at, v.e::halfvec
FROM documents_final f, unnest(f.chunk_index, f.vectors) AS v(i, e)
WHERE f.model IS NOT NULL
"""


def stage(cur: Cursor[Any], batch: list[Envelope]) -> None:
    with cur.copy("COPY documents_staged FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(STAGED_TYPES)
        for env in batch:
            ev = env.event
            if isinstance(ev, DocumentIngested):
                chunks = ev.chunks
                vectors = vector_rows(ev)
                copy.write_row(
                    (
                        env.position,
                        True,
                        ev.document_id,
                        env.aggregate_id,
                        ev.version,
                        ev.title,
                        ev.source,
                        ev.tags,
                        ev.text,
                        len(ev.text.encode("utf-8")),
                        ev.content_sha256,
                        [c.index for c in chunks],
                        [c.start for c in chunks],
                        [c.end for c in chunks],
                        env.occurred_at,
                        ev.embedding.model if ev.embedding is not None else None,
                        [v for _, v in vectors] if ev.embedding is not None else None,
                    )
                )
            elif isinstance(ev, DocumentDeleted):
                copy.write_row(
                    (
                        env.position,
                        False,
                        ev.document_id,
                        *(None,) * 11,
                        env.occurred_at,
                        None,
                        None,
                    )
                )


def build(cur: Cursor[Any]) -> None:
    """Fill the (empty) live tables from the staged events, then drop the staging tables."""
    cur.execute("SET LOCAL work_mem = '256MB'")
    cur.execute(FINAL)
    cur.execute(DOCUMENTS)
    cur.execute(CHUNKS)
    cur.execute(VECTORS)
    cur.execute("DROP TABLE documents_staged, documents_final")
