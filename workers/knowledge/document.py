"""The Document aggregate: versions of a document's content, and its deletion."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import orjson

from events.knowledge.events import ChunkSpan, DocumentDeleted, DocumentIngested
from workers.aggregate import Aggregate, DomainRuleError
from workers.knowledge.chunking import chunk_spans

if TYPE_CHECKING:
    from events.base import Event
    from events.knowledge.commands import DeleteDocument, IngestDocument
    from workers.knowledge.embedding import ChunkEmbedder


class DocumentTooLargeError(DomainRuleError):
    """Raised when a document's text exceeds the configured limit."""

    code = "too_large"


class DocumentNotFoundError(DomainRuleError):
    """Raised when deleting a document that does not exist or is already deleted."""

    code = "not_found"


def content_hash(title: str, text: str, source: str, tags: list[str]) -> str:
    return hashlib.sha256(orjson.dumps([title, text, source, tags])).hexdigest()


class Document(Aggregate):
    SNAPSHOT_VERSION = 1  # state(): {"exists": bool, "content_sha256": str}

    exists = False
    content_sha256 = ""

    def apply(self, event: Event) -> None:
        if isinstance(event, DocumentIngested):
            self.exists = True
            self.content_sha256 = event.content_sha256
        elif isinstance(event, DocumentDeleted):
            self.exists = False
            self.content_sha256 = ""

    def ingest(
        self,
        command: IngestDocument,
        *,
        max_bytes: int,
        chunk_size: int,
        overlap: int,
        embed: ChunkEmbedder | None = None,
    ) -> bool:
        """Record a new version if the content changed; False when it is unchanged.

        With ``embed``, the version carries its chunks' vectors."""
        size = len(command.text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise DocumentTooLargeError(
                f"text is {size} bytes, over the limit of {max_bytes} bytes; "
                "split the document into parts (see README, 'Large documents')"
            )
        sha = content_hash(command.title, command.text, command.source, command.tags)
        if self.exists and sha == self.content_sha256:
            return False
        spans = chunk_spans(command.text, chunk_size, overlap)
        vectors = embed.vectors(command.title, command.text, spans) if embed is not None else None
        self.record(
            DocumentIngested(
                document_id=command.document_id,
                version=self.version + 1,
                title=command.title,
                text=command.text,
                source=command.source,
                tags=command.tags,
                content_sha256=sha,
                chunks=[ChunkSpan(index=i, start=s.start, end=s.end) for i, s in enumerate(spans)],
                embedding=vectors,
            )
        )
        return True

    def delete(self, command: DeleteDocument) -> None:
        if not self.exists:
            raise DocumentNotFoundError(f"document {command.document_id!r} does not exist")
        self.record(DocumentDeleted(document_id=command.document_id, version=self.version + 1))
