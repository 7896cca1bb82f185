"""Decisions of the knowledge context."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from events.ids import document_aggregate_id
from events.knowledge.commands import DeleteDocument, IngestDocument, KnowledgeCommand
from workers.decisions import Verdict
from workers.knowledge.document import Document

if TYPE_CHECKING:
    import uuid

    from events.base import Command
    from workers.decisions import Streams


@dataclass(frozen=True)
class KnowledgeDecider:
    max_text_bytes: int
    chunk_size: int
    chunk_overlap: int
    context: str = "knowledge"

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        assert isinstance(command, KnowledgeCommand)
        return [document_aggregate_id(command.document_id)]

    def decide(self, command: Command, streams: Streams) -> Verdict:
        assert isinstance(command, KnowledgeCommand)
        document = streams.get(document_aggregate_id(command.document_id), Document)
        if isinstance(command, IngestDocument):
            changed = document.ingest(
                command,
                max_bytes=self.max_text_bytes,
                chunk_size=self.chunk_size,
                overlap=self.chunk_overlap,
            )
            return Verdict(document.id, f"version {document.version}" if changed else "unchanged")
        if isinstance(command, DeleteDocument):
            document.delete(command)
            return Verdict(document.id, f"deleted at version {document.version}")
        raise TypeError(f"no decision for {type(command).__name__}")
