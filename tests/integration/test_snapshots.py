"""Aggregate snapshots: a long stream loads from its latest snapshot, deciding as from history."""

from __future__ import annotations

import io
import itertools
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import ValidationError

from events.envelope import dumps, wrap
from events.ids import document_aggregate_id
from events.knowledge.commands import DeleteDocument, IngestDocument
from events.knowledge.events import DocumentDeleted, DocumentIngested
from infra.backup import export_store
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.settings import Settings
from infra.stack import create_database, drop_database, eventsourcing_env
from projections.knowledge.documents import DocumentsProjection
from projections.runner import ProjectionRunner
from workers.aggregate import DomainRuleError
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor, _StreamCache
from workers.items import Record
from workers.knowledge.document import Document
from workers.knowledge.handlers import KnowledgeDecider
from workers.snapshots import Stream, UnknownAggregateTypeError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from events.base import Command
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

EVERY = 50
BATCH = 30
VERSIONS = 1000
_offsets = itertools.count()
DECIDER = KnowledgeDecider(max_text_bytes=2000, chunk_size=200, chunk_overlap=20)


@pytest.fixture(scope="module")
def store(endpoints: Endpoints) -> Iterator[AggregateStore]:
    name = f"uait_snap_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    factory = open_factory("knowledge", eventsourcing_env(url))
    yield AggregateStore("knowledge", factory, snapshot_every={"Document": EVERY})
    factory.close()
    drop_database(endpoints.database_url, name)


def record(command: Command) -> Record:
    env = wrap(command, actor="test")
    return Record("uait.commands.knowledge", 0, next(_offsets), dumps(env), b"k")


def history(document_id: str, versions: int) -> list[Command]:
    """Ingests of new content, with a deletion (and a re-ingest) now and then."""
    commands: list[Command] = []
    for i in range(versions):
        if i % 97 == 96:
            commands.append(DeleteDocument(document_id=document_id))
        else:
            commands.append(IngestDocument(document_id=document_id, title="T", text=f"text {i}"))
    return commands


def write(store: AggregateStore, commands: list[Command]) -> list[int]:
    """Process in batches of BATCH; returns the document's version after each append."""
    processor = BatchProcessor(store, DECIDER)
    ends = []
    version = 0
    for start in range(0, len(commands), BATCH):
        report = processor.process([record(c) for c in commands[start : start + BATCH]])
        assert report.rejected == 0
        version += report.appended_events - report.succeeded  # minus one outcome per command
        ends.append(version)
    return ends


def snapshot_versions(store: AggregateStore, aggregate_id: uuid.UUID) -> list[int]:
    with store.datastore.get_connection() as conn:
        rows = conn.execute(
            "SELECT originator_version FROM knowledge_snapshots WHERE originator_id = %s"
            " ORDER BY 1",
            (aggregate_id,),
        ).fetchall()
    return [r["originator_version"] for r in rows]


def decide(streams: _StreamCache, command: Command) -> tuple[Any, ...]:
    streams.begin()
    try:
        verdict = DECIDER.decide(command, streams)
    except DomainRuleError as exc:
        streams.rollback()
        return ("rejected", type(exc).__name__, str(exc))
    return ("accepted", verdict, streams.recorded())


def test_a_long_stream_loads_from_its_latest_snapshot_and_decides_as_from_full_history(store):
    doc = f"doc-{uuid.uuid4().hex[:10]}"
    aggregate_id = document_aggregate_id(doc)
    ends = write(store, history(doc, VERSIONS))
    assert ends[-1] == VERSIONS
    # One snapshot with each append that carried the stream across a multiple of EVERY.
    crossed = [e for before, e in itertools.pairwise([0, *ends]) if e // EVERY > before // EVERY]
    assert snapshot_versions(store, aggregate_id) == crossed

    # At the snapshot itself: nothing to read after it.
    latest = store.load_latest([aggregate_id])[aggregate_id]
    full = store.load_streams([aggregate_id])[aggregate_id]
    assert len(full) == VERSIONS
    assert latest.snapshot is not None
    assert latest.snapshot.version == VERSIONS
    assert latest.events == []
    probes: list[Command] = [
        IngestDocument(document_id=doc, title="T", text=f"text {VERSIONS - 1}"),  # unchanged
        IngestDocument(document_id=doc, title="T", text="brand new"),
        DeleteDocument(document_id=doc),
        DeleteDocument(document_id=doc),  # already deleted: rejected
        IngestDocument(document_id=doc, title="T", text="back again"),
    ]
    decisions = both_ways(aggregate_id, latest, full, probes)
    assert [d[0] for d in decisions] == ["accepted"] * 3 + ["rejected", "accepted"]
    assert decisions[0][1].detail == "unchanged"
    recorded = [(v, type(e).__name__) for d in decisions if d[0] == "accepted" for _, v, e in d[2]]
    assert recorded == [
        (VERSIONS + 1, "DocumentIngested"),
        (VERSIONS + 2, "DocumentDeleted"),
        (VERSIONS + 3, "DocumentIngested"),
    ]

    # Some events later: the snapshot plus only the events after it.
    write(store, [IngestDocument(document_id=doc, title="T", text=f"more {i}") for i in range(7)])
    latest = store.load_latest([aggregate_id])[aggregate_id]
    full = store.load_streams([aggregate_id])[aggregate_id]
    assert latest.snapshot is not None
    assert latest.snapshot.version == VERSIONS
    assert latest.events == full[VERSIONS:]
    assert len(latest.events) == 7
    from_snapshot = latest.replay(aggregate_id, Document)
    from_history = Document.replay(aggregate_id, full)
    assert (from_snapshot.version, from_snapshot.state()) == (
        from_history.version,
        from_history.state(),
    )
    assert from_snapshot.state() == {"exists": True, "content_sha256": from_history.content_sha256}


def both_ways(
    aggregate_id: uuid.UUID, latest: Stream, full: list[Any], probes: list[Command]
) -> list[tuple[Any, ...]]:
    """Each probe decided on the aggregate loaded from the snapshot and from full history."""
    snap_cache = _StreamCache({aggregate_id: latest})
    full_cache = _StreamCache({aggregate_id: Stream(events=full)})
    decisions = []
    for command in probes:
        from_snap, from_full = decide(snap_cache, command), decide(full_cache, command)
        assert from_snap == from_full, command
        decisions.append(from_snap)
    return decisions


def test_snapshots_are_not_events_for_projections_replay_or_export(store):
    doc = f"doc-{uuid.uuid4().hex[:10]}"
    write(store, history(doc, 120))
    assert snapshot_versions(store, document_aggregate_id(doc)), "snapshots were taken"
    notes = store.recorder.select_notifications(start=0, limit=10**6)
    assert len(notes) == store.head()
    assert {n.topic for n in notes} <= {
        DocumentIngested.TYPE,
        DocumentDeleted.TYPE,
        "CommandSucceeded",
        "CommandRejected",
    }
    assert export_store(store, io.BytesIO()) == store.head()
    runner = ProjectionRunner(
        DocumentsProjection(), store.recorder, store.factory.tracking_recorder()
    )
    runner.setup()
    assert runner.catch_up() == store.head()


def test_a_snapshot_of_another_shape_is_ignored_and_the_full_history_is_loaded(store, monkeypatch):
    doc = f"doc-{uuid.uuid4().hex[:10]}"
    aggregate_id = document_aggregate_id(doc)
    write(store, history(doc, 130))
    assert store.load_latest([aggregate_id])[aggregate_id].snapshot is not None
    monkeypatch.setattr(Document, "SNAPSHOT_VERSION", 2)
    stream = store.load_latest([aggregate_id])[aggregate_id]
    assert stream.snapshot is None
    assert len(stream.events) == 130
    # The next append across a multiple takes a snapshot in the new shape, used from then on.
    write(store, [IngestDocument(document_id=doc, title="T", text=f"x {i}") for i in range(25)])
    stream = store.load_latest([aggregate_id])[aggregate_id]
    assert stream.snapshot is not None
    assert stream.snapshot.version == 155
    assert stream.events == []


def test_the_snapshot_setting_refuses_unknown_and_unsnapshottable_types(store):
    with pytest.raises(UnknownAggregateTypeError, match="Nope"):
        AggregateStore("knowledge", store.factory, snapshot_every={"Nope": 10})
    with pytest.raises(ValidationError):
        Settings(snapshot_every={"Document": 0})
    assert Settings(snapshot_every={"Document": 7}).snapshot_every == {"Document": 7}
