"""Decisions of the knowledge context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from events.ids import document_aggregate_id
from events.knowledge.commands import DeleteDocument, IngestDocument, KnowledgeCommand
from workers.decisions import Verdict
from workers.knowledge.document import Document

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from events.base import Command
    from workers.decisions import Streams


@dataclass(frozen=True)
class KnowledgeDecider:
    max_text_bytes: int
    chunk_size: int
    chunk_overlap: int
    context: str = KnowledgeCommand.CONTEXT

    @property
    def commands(self) -> frozenset[type[Command]]:
        return frozenset(_DECISIONS)

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        assert isinstance(command, KnowledgeCommand)
        return [document_aggregate_id(command.document_id)]

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
