"""Decisions of the knowledge context."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from events.ids import document_aggregate_id
from events.knowledge.commands import DeleteDocument, IngestDocument, KnowledgeCommand
from workers.decisions import Verdict
from workers.knowledge.chunking import chunk_spans
from workers.knowledge.document import Document, content_hash
from workers.knowledge.embedding import ChunkEmbedder

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Sequence

    from events.base import Command
    from infra.embeddings import Embedder
    from workers.decisions import Streams

log = logging.getLogger("uait.knowledge")


@dataclass(frozen=True)
class KnowledgeDecider:
    max_text_bytes: int
    chunk_size: int
    chunk_overlap: int
    embedder: Embedder | None = None
    """Embeds every version's chunks (None: versions are recorded without vectors)."""
    context: str = KnowledgeCommand.CONTEXT
    _chunks: ChunkEmbedder = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_chunks", ChunkEmbedder(self.embedder))

    @property
    def commands(self) -> frozenset[type[Command]]:
        return frozenset(_DECISIONS)

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        assert isinstance(command, KnowledgeCommand)
        return [document_aggregate_id(command.document_id)]

    def prepare(self, commands: Sequence[Command], streams: Streams) -> None:
        """Embed in one call the chunks of every new version this batch ingests: the model's
        batches fill across documents. A failure here is left for each decision to meet."""
        if self.embedder is None:
            return
        inputs: list[str] = []
        for command in commands:
            if not isinstance(command, IngestDocument):
                continue
            document = streams.get(document_aggregate_id(command.document_id), Document)
            sha = content_hash(command.title, command.text, command.source, command.tags)
            if document.exists and sha == document.content_sha256:
                continue
            spans = chunk_spans(command.text, self.chunk_size, self.chunk_overlap)
            inputs.extend(ChunkEmbedder.inputs(command.title, command.text, spans))
        try:
            self._chunks.warm(inputs)
        except Exception:
            log.warning(
                "embedding a batch's chunks failed; each document will retry", exc_info=True
            )

    def decide(self, command: Command, streams: Streams) -> Verdict:
        assert isinstance(command, KnowledgeCommand)
        decision = _DECISIONS.get(type(command))
        if decision is None:
            raise TypeError(f"no decision for {type(command).__name__}")
        document = streams.get(document_aggregate_id(command.document_id), Document)
        return decision(self, command, document)

    def _ingest(self, command: IngestDocument, document: Document) -> Verdict:
        changed = document.ingest(
            command,
            max_bytes=self.max_text_bytes,
            chunk_size=self.chunk_size,
            overlap=self.chunk_overlap,
            embed=self._chunks if self.embedder is not None else None,
        )
        return Verdict(document.id, f"version {document.version}" if changed else "unchanged")

    def _delete(self, command: DeleteDocument, document: Document) -> Verdict:
        document.delete(command)
        return Verdict(document.id, f"deleted at version {document.version}")


# Each command type this context decides, and how.
_DECISIONS: dict[type[Command], Callable[[KnowledgeDecider, Any, Document], Verdict]] = {
    IngestDocument: KnowledgeDecider._ingest,
    DeleteDocument: KnowledgeDecider._delete,
}
