"""The write path's decisions against the real event store (PostgreSQL)."""

from __future__ import annotations

import itertools
import uuid
from typing import TYPE_CHECKING

import orjson
import pytest

from events.envelope import dumps, wrap
from events.ids import command_aggregate_id, document_aggregate_id
from events.knowledge.commands import DeleteDocument, IngestDocument
from events.knowledge.events import DocumentDeleted, DocumentIngested
from events.outcomes import CommandRejected, CommandSucceeded
from events.stored import decode
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.stack import eventsourcing_env
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.items import Record
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from events.base import Command, Event
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

TOPIC = "uait.commands.knowledge"
_offsets = itertools.count()


@pytest.fixture(scope="module")
def store(endpoints: Endpoints) -> Iterator[AggregateStore]:
    migrate(endpoints.database_url)
    factory = open_factory("knowledge", eventsourcing_env(endpoints.database_url))
    yield AggregateStore("knowledge", factory)
    factory.close()


@pytest.fixture
def processor(store: AggregateStore) -> BatchProcessor:
    return BatchProcessor(
        store, KnowledgeDecider(max_text_bytes=2000, chunk_size=200, chunk_overlap=20)
    )


def doc_id() -> str:
    return f"doc-{uuid.uuid4().hex[:12]}"


def record(value: bytes, key: str = "k") -> Record:
    return Record(TOPIC, 0, next(_offsets), value, key.encode())


def envelope_record(command: Command) -> tuple[uuid.UUID, Record]:
    env = wrap(command, actor="test")
    return env.message_id, record(dumps(env), command.partition_key())


def ingest(document_id: str, text: str = "Some text about kafka.", title: str = "T") -> Command:
    return IngestDocument(document_id=document_id, title=title, text=text)


def stream(store: AggregateStore, aggregate_id: uuid.UUID) -> list[Event]:
    return store.load_streams([aggregate_id]).get(aggregate_id, [])


def outcome(store: AggregateStore, command_id: uuid.UUID) -> Event:
    events = stream(store, command_aggregate_id(command_id))
    assert len(events) == 1, f"expected exactly one outcome, got {events}"
    return events[0]


def test_a_batch_commits_every_command_with_its_outcome_in_one_transaction(store, processor):
    ids, records = zip(*(envelope_record(ingest(doc_id())) for _ in range(40)), strict=True)
    head = store.head()
    report = processor.process(list(records))
    assert (report.succeeded, report.rejected, report.duplicates, report.splits) == (40, 0, 0, 0)
    # 40 documents + 40 outcomes, appended as one contiguous run of positions.
    notes = store.recorder.select_notifications(start=head, limit=1000, inclusive_of_start=False)
    assert [n.id for n in notes] == list(range(head + 1, head + 81))
    for command_id in ids:
        assert isinstance(outcome(store, command_id), CommandSucceeded)


def test_a_redelivered_batch_is_reported_as_duplicates_and_appends_nothing(store, processor):
    records = [envelope_record(ingest(doc_id()))[1] for _ in range(10)]
    processor.process(records)
    head = store.head()
    again = processor.process(records)
    assert (again.succeeded, again.duplicates, again.appended_events) == (0, 10, 0)
    assert store.head() == head


def test_the_same_command_twice_in_one_batch_takes_effect_once(store, processor):
    command_id, rec = envelope_record(ingest(doc_id()))
    report = processor.process([rec, rec])
    assert (report.succeeded, report.duplicates) == (1, 1)
    assert isinstance(outcome(store, command_id), CommandSucceeded)


class RacingStore(AggregateStore):
    """A real store where another writer commits a conflicting event just before our append."""

    def __init__(self, inner: AggregateStore, race: list[tuple[uuid.UUID, Command]]) -> None:
        self.__dict__.update(inner.__dict__)
        self.race = race
        self.appends = 0

    def append(self, stored_events):  # type: ignore[no-untyped-def]
        self.appends += 1
        if self.race:
            other = BatchProcessor(
                AggregateStore(self.context, self.factory),
                KnowledgeDecider(max_text_bytes=2000, chunk_size=200, chunk_overlap=20),
            )
            command_id, command = self.race.pop()
            env = wrap(command, actor="racer", message_id=command_id)
            other.process([record(dumps(env), command.partition_key())])
        return super().append(stored_events)


def test_a_command_that_conflicts_at_append_splits_the_batch_and_the_others_commit(store):
    # The racer records the outcome of command X between our duplicate check and our append,
    # so our transaction fails on X's outcome record: the batch must split, commit the other
    # nine, and report X as a duplicate.
    items = [envelope_record(ingest(doc_id())) for _ in range(10)]
    x_id, _ = items[6]
    x_command = IngestDocument.model_validate(orjson.loads(items[6][1].value or b"")["payload"])
    racing = RacingStore(store, [(x_id, x_command)])
    processor = BatchProcessor(
        racing, KnowledgeDecider(max_text_bytes=2000, chunk_size=200, chunk_overlap=20)
    )
    report = processor.process([r for _, r in items])
    assert report.splits >= 1
    assert (report.succeeded, report.duplicates) == (9, 1)
    for command_id, _ in items:
        assert isinstance(outcome(store, command_id), CommandSucceeded)
    # X took effect once: its document has exactly one version.
    assert len(stream(store, document_aggregate_id(x_command.document_id))) == 1


def test_a_concurrent_writer_on_the_same_document_is_retried_from_fresh_state(store):
    d = doc_id()
    racer_id = uuid.uuid4()
    mine_id, mine = envelope_record(ingest(d, text="my version of the text"))
    racing = RacingStore(store, [(racer_id, ingest(d, text="the racer's text"))])
    processor = BatchProcessor(
        racing, KnowledgeDecider(max_text_bytes=2000, chunk_size=200, chunk_overlap=20)
    )
    report = processor.process([mine])
    assert report.succeeded == 1
    events = stream(store, document_aggregate_id(d))
    assert [e.version for e in events] == [1, 2]  # type: ignore[attr-defined]
    assert events[1].text == "my version of the text"  # type: ignore[attr-defined]
    assert isinstance(outcome(store, mine_id), CommandSucceeded)


def test_poison_commands_are_rejected_with_a_reason_and_never_hold_back_the_batch(store, processor):
    good = [envelope_record(ingest(doc_id())) for _ in range(3)]
    base = wrap(ingest(doc_id()), actor="test")
    payload = base.model_dump(mode="json")
    poison = {
        "malformed": b"{not json",
        "not_object": b"[1,2,3]",
        "no_fields": orjson.dumps({"message_id": str(uuid.uuid4())}),
        "unknown_type": orjson.dumps({**payload, "message_id": str(uuid.uuid4()), "type": "Nope"}),
        "future_version": orjson.dumps({**payload, "message_id": str(uuid.uuid4()), "version": 7}),
        "invalid": orjson.dumps(
            {
                **payload,
                "message_id": str(uuid.uuid4()),
                "payload": {**payload["payload"], "document_id": "has spaces"},
            }
        ),
        "too_large": dumps(wrap(ingest(doc_id(), text="x" * 5000), actor="t")),
        "event_as_command": dumps(wrap(DocumentDeleted(document_id="d", version=1), actor="t")),
        "missing": dumps(wrap(DeleteDocument(document_id=doc_id()), actor="t")),
    }
    records = [good[0][1], *(record(v) for v in poison.values()), good[1][1], good[2][1]]
    report = processor.process(records)
    assert (report.succeeded, report.rejected) == (3, len(poison))
    codes = {}
    for name, rec in zip(poison, records[1:-2], strict=True):
        item = processor.parse(rec)
        event = outcome(store, item.command_id)
        assert isinstance(event, CommandRejected), name
        assert event.reason
        codes[name] = event.code
    assert codes == {
        "malformed": "malformed",
        "not_object": "malformed",
        "no_fields": "malformed",
        "unknown_type": "unknown_type",
        "future_version": "unknown_type",
        "invalid": "invalid",
        "too_large": "too_large",
        "event_as_command": "unknown_type",
        "missing": "not_found",
    }
    for command_id, _ in good:
        assert isinstance(outcome(store, command_id), CommandSucceeded)


def test_a_broken_record_redelivered_maps_to_the_same_single_outcome(store, processor):
    rec = record(b"\xff\xfe not even utf-8")
    first = processor.process([rec])
    again = processor.process([rec])
    assert (first.rejected, again.duplicates) == (1, 1)


def test_commands_for_one_document_in_one_batch_apply_in_order(store, processor):
    d = doc_id()
    commands = [
        ingest(d, text="first text"),
        ingest(d, text="second text"),
        ingest(d, text="second text"),  # unchanged: no new version
        DeleteDocument(document_id=d),
        DeleteDocument(document_id=d),  # already deleted: rejected
        ingest(d, text="third text"),
    ]
    items = [envelope_record(c) for c in commands]
    report = processor.process([r for _, r in items])
    assert (report.succeeded, report.rejected) == (5, 1)
    events = stream(store, document_aggregate_id(d))
    assert [type(e).__name__ for e in events] == [
        "DocumentIngested",
        "DocumentIngested",
        "DocumentDeleted",
        "DocumentIngested",
    ]
    assert [e.version for e in events] == [1, 2, 3, 4]  # type: ignore[attr-defined]
    assert isinstance(events[3], DocumentIngested)
    assert events[3].text == "third text"
    unchanged = outcome(store, items[2][0])
    assert isinstance(unchanged, CommandSucceeded)
    assert unchanged.detail == "unchanged"
    rejected = outcome(store, items[4][0])
    assert isinstance(rejected, CommandRejected)
    assert rejected.code == "not_found"


def test_a_decider_bug_rejects_only_that_command(store):
    class Flaky(KnowledgeDecider):
        def decide(self, command, streams):  # type: ignore[no-untyped-def]
            if command.document_id.endswith("boom"):
                raise ZeroDivisionError("bug")
            return super().decide(command, streams)

    processor = BatchProcessor(store, Flaky(max_text_bytes=2000, chunk_size=200, chunk_overlap=20))
    ok_id, ok = envelope_record(ingest(doc_id()))
    bad_id, bad = envelope_record(ingest(doc_id() + "-boom"))
    report = processor.process([bad, ok])
    assert (report.succeeded, report.rejected) == (1, 1)
    rejected = outcome(store, bad_id)
    assert isinstance(rejected, CommandRejected)
    assert "ZeroDivisionError" in rejected.reason
    assert isinstance(outcome(store, ok_id), CommandSucceeded)


def test_stored_events_carry_the_command_and_correlation(store, processor):
    env = wrap(ingest(doc_id()), actor="user:7")
    processor.process([record(dumps(env))])
    aggregate = command_aggregate_id(env.message_id)
    [stored] = store.recorder.select_events(aggregate)
    decoded = decode(stored.topic, stored.state)
    assert decoded.meta == {
        "command_id": str(env.message_id),
        "correlation_id": str(env.correlation_id),
        "actor": "user:7",
    }
