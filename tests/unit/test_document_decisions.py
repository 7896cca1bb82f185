"""The Document aggregate's decisions, without any infrastructure."""

from __future__ import annotations

import uuid

import pytest

from events.knowledge.commands import DeleteDocument, IngestDocument
from events.knowledge.events import DocumentDeleted, DocumentIngested
from workers.knowledge.document import Document, DocumentNotFoundError, DocumentTooLargeError

LIMITS = {"max_bytes": 1000, "chunk_size": 100, "overlap": 10}


def fresh() -> Document:
    return Document(uuid.uuid4())


def ingest(text: str = "hello world", **kw: object) -> IngestDocument:
    return IngestDocument(document_id="d1", title=kw.pop("title", "T"), text=text, **kw)  # type: ignore[arg-type]


def test_a_first_ingest_records_version_1_with_chunks_that_are_spans_of_the_text():
    doc = fresh()
    text = "First paragraph.\n\n" + "word " * 60
    assert doc.ingest(ingest(text), **LIMITS) is True
    [(version, event)] = doc.pending
    assert isinstance(event, DocumentIngested)
    assert (version, event.version) == (1, 1)
    assert len(event.chunks) > 1
    assert all(text[c.start : c.end].strip() == text[c.start : c.end] for c in event.chunks)


def test_identical_content_records_nothing_and_changed_content_a_new_version():
    doc = fresh()
    doc.ingest(ingest("a"), **LIMITS)
    assert doc.ingest(ingest("a"), **LIMITS) is False
    assert doc.ingest(ingest("a", tags=["new"]), **LIMITS) is True
    assert doc.ingest(ingest("b", tags=["new"]), **LIMITS) is True
    assert [v for v, _ in doc.pending] == [1, 2, 3]


def test_text_over_the_limit_in_utf8_bytes_is_refused():
    doc = fresh()
    with pytest.raises(DocumentTooLargeError, match="over the limit"):
        doc.ingest(ingest("é" * 501), **LIMITS)  # 1002 bytes, 501 characters
    assert doc.pending == []


def test_deleting_records_a_deletion_and_a_second_delete_is_refused():
    doc = fresh()
    doc.ingest(ingest(), **LIMITS)
    doc.delete(DeleteDocument(document_id="d1"))
    assert isinstance(doc.pending[-1][1], DocumentDeleted)
    with pytest.raises(DocumentNotFoundError):
        doc.delete(DeleteDocument(document_id="d1"))


def test_deleting_a_document_that_never_existed_is_refused():
    with pytest.raises(DocumentNotFoundError):
        fresh().delete(DeleteDocument(document_id="nope"))


def test_replaying_the_history_rebuilds_the_same_state():
    doc = fresh()
    doc.ingest(ingest("a"), **LIMITS)
    doc.delete(DeleteDocument(document_id="d1"))
    doc.ingest(ingest("b"), **LIMITS)
    again = Document.replay(doc.id, [e for _, e in doc.pending])
    assert (again.version, again.exists, again.content_sha256) == (
        doc.version,
        doc.exists,
        doc.content_sha256,
    )
    assert again.ingest(ingest("b"), **LIMITS) is False
