"""The ``documents``, ``chunks`` and ``chunk_vectors`` read models: full-text and vector search.

Chunks carry the document title, so the search vector weights the title (A) above the body (B)
and a hit can be ranked and highlighted per chunk. ``chunk_vectors`` holds the vectors the
events carry (pgvector ``halfvec``, HNSW on cosine distance) with the document's source, tags and
time beside them, so a filtered vector search needs no join; a rebuild reproduces it from the
events without calling a model. The three tables change in one transaction: a search never sees
a version's text without its vectors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from events.knowledge.events import DocumentDeleted, DocumentIngested
from projections.knowledge import documents_bulk
from projections.knowledge.vector_rows import require_pgvector, vector_rows

if TYPE_CHECKING:
    from psycopg import Cursor

    from projections.base import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    document_id    text PRIMARY KEY,
    aggregate_id   uuid NOT NULL,
    version        integer NOT NULL,
    title          text NOT NULL,
    source         text NOT NULL,
    tags           text[] NOT NULL,
    text           text NOT NULL,
    size_bytes     integer NOT NULL,
    content_sha256 text NOT NULL,
    chunk_count    integer NOT NULL,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    position       bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    document_id  text NOT NULL,
    chunk_index  integer NOT NULL,
    version      integer NOT NULL,
    title        text NOT NULL,
    text         text NOT NULL,
    start_offset integer NOT NULL,
    end_offset   integer NOT NULL,
    search       tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, title), 'A')
        || setweight(to_tsvector('english'::regconfig, text), 'B')
    ) STORED,
    PRIMARY KEY (document_id, chunk_index)
);
CREATE TABLE IF NOT EXISTS chunk_vectors (
    document_id  text NOT NULL,
    chunk_index  integer NOT NULL,
    version      integer NOT NULL,
    model        text NOT NULL,
    source       text NOT NULL,
    tags         text[] NOT NULL,
    updated_at   timestamptz NOT NULL,
    embedding    halfvec(384) NOT NULL,
    PRIMARY KEY (document_id, chunk_index)
);
"""
# Built after the bulk load of a rebuild: one GIN or HNSW build is far cheaper than row-by-row
# inserts into the index.
INDEXES = """
CREATE INDEX IF NOT EXISTS chunks_search_idx ON chunks USING gin (search);
CREATE INDEX IF NOT EXISTS chunk_vectors_hnsw_idx ON chunk_vectors
    USING hnsw (embedding halfvec_cosine_ops);
"""
VECTOR_COLUMNS = "document_id, chunk_index, version, model, source, tags, updated_at, embedding"

COLUMNS = (
    "document_id, aggregate_id, version, title, source, tags, text, size_bytes, content_sha256,"
    " chunk_count, created_at, updated_at, position"
)
# created_at survives new versions of a live document.
ON_CONFLICT = """
ON CONFLICT (document_id) DO UPDATE SET
    aggregate_id = EXCLUDED.aggregate_id, version = EXCLUDED.version,
    title = EXCLUDED.title, source = EXCLUDED.source, tags = EXCLUDED.tags,
    text = EXCLUDED.text, size_bytes = EXCLUDED.size_bytes,
    content_sha256 = EXCLUDED.content_sha256, chunk_count = EXCLUDED.chunk_count,
    updated_at = EXCLUDED.updated_at, position = EXCLUDED.position
"""
UPSERT_ROW = f"INSERT INTO documents ({COLUMNS}) VALUES ({', '.join(['%s'] * 13)}) {ON_CONFLICT}"
UPSERT_COPIED = (
    f"INSERT INTO documents ({COLUMNS}) SELECT {COLUMNS} FROM documents_in {ON_CONFLICT}"
)
# Past this many rows, COPY into a scratch table and one set-based upsert beat a statement per
# row; below it the scratch table's per-transaction cost (it is emptied at every commit) does not.
COPY_FROM = 64


# Binary COPY with declared types: a third of the cost of text COPY per row.
DOCUMENT_TYPES = (
    "text",
    "uuid",
    "int4",
    "text",
    "text",
    "text[]",
    "text",
    "int4",
    "text",
    "int4",
    "timestamptz",
    "timestamptz",
    "int8",
)
CHUNK_TYPES = ("text", "int4", "int4", "text", "text", "int4", "int4")


class DocumentsProjection:
    name: ClassVar[str] = "knowledge.documents"
    context: ClassVar[str] = "knowledge"
    version: ClassVar[int] = 2
    tables: ClassVar[tuple[str, ...]] = ("documents", "chunks", "chunk_vectors")
    topics: ClassVar[frozenset[str]] = frozenset({DocumentIngested.TYPE, DocumentDeleted.TYPE})

    def create(self, cur: Cursor[Any], *, indexes: bool = True, bulk: bool = False) -> None:
        require_pgvector(cur)
        if bulk:
            cur.execute(documents_bulk.STAGING)
            return
        cur.execute(SCHEMA)
        if indexes:
            self.create_indexes(cur)

    def create_indexes(self, cur: Cursor[Any]) -> None:
        cur.execute(INDEXES)

    def stage(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        documents_bulk.stage(cur, batch)

    def seal(self, cur: Cursor[Any]) -> None:
        cur.execute(SCHEMA)
        documents_bulk.build(cur)
        self.create_indexes(cur)

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        # The last event per document wins within a batch; created_at survives new versions.
        final: dict[str, tuple[Envelope, DocumentIngested] | None] = {}
        first_seen: dict[str, Any] = {}
        deleted: set[str] = set()  # a deletion in this batch ends the row's life, even if re-added
        for env in batch:
            event = env.event
            if isinstance(event, DocumentIngested):
                final[event.document_id] = (env, event)
                first_seen.setdefault(event.document_id, env.occurred_at)
            elif isinstance(event, DocumentDeleted):
                final[event.document_id] = None
                first_seen.pop(event.document_id, None)
                deleted.add(event.document_id)
        if not final:
            return
        # A document's first version has no chunks before it: only later ones replace theirs.
        touched = [d for d, state in final.items() if state is None or state[1].version > 1]
        if touched:
            cur.execute("DELETE FROM chunks WHERE document_id = ANY(%s)", (touched,))
            cur.execute("DELETE FROM chunk_vectors WHERE document_id = ANY(%s)", (touched,))
        gone = list(deleted)
        if gone:
            cur.execute("DELETE FROM documents WHERE document_id = ANY(%s)", (gone,))
        rows = []
        for doc_id, state in final.items():
            if state is None:
                continue
            env, ev = state
            rows.append(
                (
                    doc_id,
                    env.aggregate_id,
                    ev.version,
                    ev.title,
                    ev.source,
                    ev.tags,
                    ev.text,
                    len(ev.text.encode("utf-8")),
                    ev.content_sha256,
                    len(ev.chunks),
                    first_seen.get(doc_id, env.occurred_at),
                    env.occurred_at,
                    env.position,
                )
            )
        if not rows:
            return
        if len(rows) < COPY_FROM:
            cur.executemany(UPSERT_ROW, rows)
        else:
            cur.execute(
                "CREATE TEMP TABLE IF NOT EXISTS documents_in"
                " (LIKE documents INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
            )
            with cur.copy(f"COPY documents_in ({COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(DOCUMENT_TYPES)
                for row in rows:
                    copy.write_row(row)
            cur.execute(UPSERT_COPIED)
        with cur.copy(
            "COPY chunks (document_id, chunk_index, version, title, text, start_offset, "
            "end_offset) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(CHUNK_TYPES)
            for doc_id, state in final.items():
                if state is None:
                    continue
                _, ev = state
                for c in ev.chunks:
                    copy.write_row(
                        (
                            doc_id,
                            c.index,
                            ev.version,
                            ev.title,
                            ev.text[c.start : c.end],
                            c.start,
                            c.end,
                        )
                    )
        with cur.copy(f"COPY chunk_vectors ({VECTOR_COLUMNS}) FROM STDIN") as copy:
            for doc_id, state in final.items():
                if state is None or state[1].embedding is None:
                    continue
                env, ev = state
                assert ev.embedding is not None
                for index, vector in vector_rows(ev):
                    copy.write_row(
                        (
                            doc_id,
                            index,
                            ev.version,
                            ev.embedding.model,
                            ev.source,
                            ev.tags,
                            env.occurred_at,
                            vector,
                        )
                    )
