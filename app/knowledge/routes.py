"""Knowledge routes: commands go to Kafka; queries read the documents and chunks read models."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app.auth.principal import Principal, require
from app.commanding import submit
from app.deps import Deps, deps
from app.knowledge.queries import Filters
from app.knowledge.search import Mode
from app.knowledge.state import knowledge
from app.lanes import lane
from app.problems import V1_PROBLEMS, V1_WRITE_PROBLEMS, ProblemError, problem_responses
from app.queries import BadCursorError
from events.ids import uuid7
from events.knowledge.commands import DeleteDocument, DocumentId, IngestDocument, Source, Tag, Text
from projections.knowledge.documents import DocumentsProjection
from telemetry.metrics import CACHE_LOOKUPS

if TYPE_CHECKING:
    from app.knowledge.cache import CachedQueries

router = APIRouter(
    prefix="/v1/knowledge", tags=["knowledge"], responses=problem_responses(*V1_PROBLEMS)
)

Reader = Annotated[Principal, Depends(require("knowledge:read"))]
Writer = Annotated[Principal, Depends(require("knowledge:write"))]
NO_CONTROL_CHARACTERS = r"^[^\x00-\x08\x0b-\x1f\x7f]*$"
# With `Prefer: wait=N`: the command's outcome, or its rejection (404, 409, 413, 422).
WRITE_RESPONSES = problem_responses(*V1_WRITE_PROBLEMS, 404)


def _outcome(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


class IngestDocumentBody(BaseModel):
    """A document to add, or a new version of one (same ``document_id``)."""

    model_config = ConfigDict(extra="forbid")

    document_id: DocumentId | None = Field(
        default=None, description="your id for the document; generated when absent"
    )
    title: Annotated[Text, Field(max_length=500)]
    text: Text
    source: Source = ""
    tags: Annotated[list[Tag], Field(max_length=50)] = []


class Accepted(BaseModel):
    command_id: str
    status_url: str
    document_id: str | None = None


async def read_model_at(d: Deps, after: int | None) -> None:
    """Read-your-writes: wait until the documents read model has reached ``after``."""
    if after is None:
        return
    if not await d.watcher.wait_for(DocumentsProjection.name, after, 0):
        # Not there yet. A position past the store's head was never handed out: refuse it at
        # once instead of holding the connection for the whole wait.
        head = await d.queries.head(DocumentsProjection.context)
        if after > head:
            raise ProblemError(
                422,
                "Position beyond the event store",
                f"position {after} is past the head of the {DocumentsProjection.context} "
                f"event store ({head}); use a position returned by the API",
                type_="urn:uait:problem:position-beyond-head",
            )
    if not await d.watcher.wait_for(DocumentsProjection.name, after, d.settings.max_wait_s):
        raise ProblemError(
            503,
            "Read model behind",
            f"the documents read model has not reached position {after} yet",
            type_="urn:uait:problem:read-model-behind",
            headers={"Retry-After": "1"},
        )


@router.post(
    "/documents",
    status_code=202,
    response_model=Accepted,
    responses={
        **WRITE_RESPONSES,
        201: _outcome("Ingested within `Prefer: wait=N`: the command's outcome"),
    },
)
async def ingest_document(
    body: IngestDocumentBody, request: Request, d: Annotated[Deps, Depends(deps)], who: Writer
) -> JSONResponse:
    """Publish `IngestDocument`. `Prefer: wait=N` waits up to N s for the outcome (201)."""
    text_bytes = len(body.text.encode("utf-8"))
    if text_bytes > d.settings.max_text_bytes:
        raise ProblemError(
            413,
            "Document too large",
            f"text is {text_bytes} bytes; the limit is {d.settings.max_text_bytes} bytes. "
            "Split larger documents into parts (see README, 'Large documents').",
        )
    document_id = body.document_id or str(uuid7())
    command = IngestDocument(
        document_id=document_id,
        title=body.title,
        text=body.text,
        source=body.source,
        tags=body.tags,
    )
    return await submit(
        request,
        d,
        command,
        actor=who.actor,
        success_status=201,
        extra={"document_id": document_id},
    )


# POST /v1/knowledge/documents is the busiest route: served by a lane (app.lanes).
LANES = (lane("POST", f"{router.prefix}/documents", ingest_document, status_code=202),)


@router.delete(
    "/documents/{document_id}",
    status_code=202,
    response_model=Accepted,
    responses={
        **WRITE_RESPONSES,
        200: _outcome("Deleted within `Prefer: wait=N`: the command's outcome"),
    },
)
async def delete_document(
    document_id: DocumentId, request: Request, d: Annotated[Deps, Depends(deps)], who: Writer
) -> JSONResponse:
    """Publish `DeleteDocument`: it leaves the read models; its history stays in the store."""
    return await submit(
        request,
        d,
        DeleteDocument(document_id=document_id),
        actor=who.actor,
        success_status=200,
        extra={"document_id": document_id},
    )


@router.get("/documents/{document_id}", responses=problem_responses(404))
async def get_document(
    document_id: DocumentId,
    d: Annotated[Deps, Depends(deps)],
    who: Reader,
    after: Annotated[int | None, Query(ge=0, description="wait for this position")] = None,
    include_chunks: bool = False,
) -> Any:
    """One document; from the cache unless `?after=` asks to read one's own write."""
    await read_model_at(d, after)
    if (cached := _cache(d, after, "document")) is not None:
        doc = await cached.document(document_id, with_chunks=include_chunks)
    else:
        doc = jsonable_encoder(
            await knowledge(d).queries.document(document_id, with_chunks=include_chunks)
        )
    if doc is None:
        raise ProblemError(404, "Document not found", f"no document {document_id!r}")
    return doc


@router.get("/documents", responses=problem_responses(400))
async def list_documents(
    d: Annotated[Deps, Depends(deps)],
    who: Reader,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> Any:
    await read_model_at(d, after)
    try:
        if (cached := _cache(d, after, "list")) is not None:
            return await cached.list_documents(cursor, limit)
        items, next_cursor = await knowledge(d).queries.documents(cursor, limit)
    except BadCursorError as exc:
        raise ProblemError(400, "Bad cursor", str(exc)) from exc
    return jsonable_encoder({"items": items, "next_cursor": next_cursor})


@router.get("/search")
async def search(
    d: Annotated[Deps, Depends(deps)],
    who: Reader,
    q: Annotated[str, Query(min_length=1, max_length=1000, pattern=NO_CONTROL_CHARACTERS)],
    mode: Annotated[
        Mode,
        Query(
            description="hybrid: full-text and vector candidates fused by reciprocal rank;"
            " vector: nearest chunks by cosine similarity; text: full-text rank"
        ),
    ] = "hybrid",
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
    source: Annotated[str | None, Query(max_length=200, pattern=NO_CONTROL_CHARACTERS)] = None,
    tag: Annotated[list[Tag] | None, Query(max_length=10, description="every one given")] = None,
    document_id: Annotated[
        list[DocumentId] | None, Query(max_length=100, description="any one given")
    ] = None,
    since: Annotated[datetime | None, Query(description="last version at or after")] = None,
    until: Annotated[datetime | None, Query(description="last version before")] = None,
    after: Annotated[int | None, Query(ge=0)] = None,
) -> Any:
    """Search the chunks: the best chunk per document, with its citation (document, version,
    chunk index, character offsets), its scores (text, vector, fused) and a highlighted
    snippet. A vector or hybrid search answers in text mode when the embedder cannot run, and
    says so in ``fallback``."""
    await read_model_at(d, after)
    filters = Filters(
        source=source,
        tags=tuple(sorted(set(tag or ()))),
        documents=tuple(sorted(set(document_id or ()))),
        since=since,
        until=until,
    )
    searcher = knowledge(d).searcher

    async def load() -> dict[str, Any]:
        return await searcher.search(q, mode, limit, filters)

    if (cached := _cache(d, after, "search")) is not None:
        return await cached.search((q, mode, limit, filters.key()), load)
    return jsonable_encoder(await load())


def _cache(d: Deps, after: int | None, kind: str) -> CachedQueries | None:
    """The cache, unless there is none or ``?after=`` asks for the read model itself.

    Also bypassed in the first moments of a process, until the live version of the tables is
    known (keys carry it).
    """
    cached = knowledge(d).cached
    if cached is None:
        return None
    if after is not None or not cached.ready:
        CACHE_LOOKUPS.labels(f"{DocumentsProjection.name}:{kind}", "bypass").inc()
        return None
    return cached
