"""Events of the knowledge context."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from events.base import Event, register


class ChunkSpan(BaseModel):
    """A chunk of a document's text: ``text[start:end]``, in characters."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    index: int
    start: int
    end: int


@register
class DocumentIngested(Event):
    """A document's version ``version`` with its text split into chunks.

    The chunks are spans of ``text`` (overlapping by the configured overlap), so the text is
    stored once and every chunk is exactly reproducible.
    """

    TYPE: ClassVar[str] = "DocumentIngested"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    document_id: str
    version: int
    title: str
    text: str
    source: str
    tags: list[str]
    content_sha256: str
    chunks: list[ChunkSpan]


@register
class DocumentDeleted(Event):
    """The document left the read models; its stream stays in the event store."""

    TYPE: ClassVar[str] = "DocumentDeleted"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    document_id: str
    version: int
