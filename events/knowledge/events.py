"""Events of the knowledge context."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from events.base import Event, register, upcaster


class ChunkSpan(BaseModel):
    """A chunk of a document's text: ``text[start:end]``, in characters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    start: int
    end: int


class ChunkVectors(BaseModel):
    """The vectors of a version's chunks, in chunk order, and what made them.

    ``vectors`` is base64 of little-endian float16, ``dim`` values per chunk: 768 bytes for a
    384-dimension chunk, enough for cosine ranking (float16 keeps ~3 significant digits).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    dim: int = Field(gt=0)
    normalized: bool
    dtype: Literal["float16"] = "float16"
    vectors: str


@register
class DocumentIngested(Event):
    """A document's version ``version`` with its text split into chunks.

    The chunks are spans of ``text`` (overlapping by the configured overlap), so the text is
    stored once and every chunk is exactly reproducible.
    """

    TYPE: ClassVar[str] = "DocumentIngested"
    VERSION: ClassVar[int] = 2
    PUBLIC: ClassVar[bool] = True

    document_id: str
    version: int
    title: str
    text: str
    source: str
    tags: list[str]
    content_sha256: str
    chunks: list[ChunkSpan]
    embedding: ChunkVectors | None = None
    """Its chunks' vectors (None: no embedder was configured when it was ingested). Each chunk
    is embedded as its document's title, a newline, then the chunk's text."""


@upcaster(DocumentIngested.TYPE, 1)
def _ingested_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 1 carried no vectors."""
    return {**data, "embedding": None}


@register
class DocumentDeleted(Event):
    """The document left the read models; its stream stays in the event store."""

    TYPE: ClassVar[str] = "DocumentDeleted"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    document_id: str
    version: int
