from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
import pytest
from pydantic import ValidationError

import contexts  # noqa: F401  (registers every message type)
from events.base import UnknownMessageTypeError, load, register, upcaster
from events.envelope import MalformedEnvelopeError, dumps, loads, open_command, wrap
from events.ids import command_aggregate_id, uuid7
from events.knowledge.commands import IngestDocument
from events.knowledge.events import DocumentDeleted
from events.stored import EventMeta, decode, encode_state


def test_uuid7_ids_are_version_7_and_strictly_increasing():
    ids = [uuid7() for _ in range(5000)]
    assert all(i.version == 7 for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_the_outcome_aggregate_id_is_derived_deterministically_from_the_message_id():
    mid = uuid7()
    assert command_aggregate_id(mid) == command_aggregate_id(uuid.UUID(str(mid)))
    assert command_aggregate_id(mid) != command_aggregate_id(uuid7())


def test_an_envelope_round_trips_through_orjson_with_every_field():
    cmd = IngestDocument(document_id="doc-1", title="T", text="body", tags=["a"])
    env = wrap(
        cmd,
        actor="user:42",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    back = loads(dumps(env))
    assert back == env
    assert back.correlation_id == env.message_id
    assert open_command(back) == cmd


def test_messages_are_frozen():
    cmd = IngestDocument(document_id="d", title="T", text="x")
    with pytest.raises(ValidationError):
        cmd.title = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"message_id": "x"}', "message_id"),
    ],
)
def test_malformed_envelopes_are_refused_with_a_reason(raw, fragment):
    with pytest.raises(MalformedEnvelopeError, match=fragment):
        loads(raw)


def test_an_unknown_type_or_a_newer_version_is_refused():
    env = wrap(IngestDocument(document_id="d", title="T", text="x"), actor="a")
    future = env.model_copy(update={"version": 99})
    with pytest.raises(UnknownMessageTypeError, match="version 99"):
        open_command(future)
    with pytest.raises(UnknownMessageTypeError):
        open_command(env.model_copy(update={"type": "LaunchRocket"}))


def test_an_event_type_is_not_accepted_as_a_command():
    env = wrap(DocumentDeleted(document_id="d", version=2), actor="a")
    with pytest.raises(UnknownMessageTypeError, match="not a command"):
        open_command(env)


@pytest.mark.parametrize(
    "payload",
    [
        {"document_id": "bad id with spaces", "title": "T", "text": "x"},
        {"document_id": "d", "title": "T", "text": "   "},
        {"document_id": "d", "title": "T", "text": "nul\x00byte"},
        {"document_id": "d", "title": "T", "text": "x", "surprise": 1},
        {"document_id": "d", "title": "", "text": "x"},
    ],
)
def test_invalid_ingest_payloads_fail_validation(payload):
    with pytest.raises(ValidationError):
        IngestDocument.model_validate(payload)


def test_old_versions_are_upcast_on_load():
    from typing import ClassVar

    from events.base import Event

    @register
    class SampleRenamed(Event):
        TYPE: ClassVar[str] = "SampleRenamed"
        VERSION: ClassVar[int] = 2
        full_name: str

    @upcaster("SampleRenamed", 1)
    def _v1_to_v2(data):
        return {"full_name": data["name"]}

    assert load("SampleRenamed", 1, {"name": "Ada"}) == SampleRenamed(full_name="Ada")
    assert load("SampleRenamed", 2, {"full_name": "Bo"}) == SampleRenamed(full_name="Bo")


def test_stored_state_is_orjson_keyed_by_the_type_name():
    event = DocumentDeleted(document_id="d", version=3)
    meta = EventMeta(command_id=uuid7(), correlation_id=uuid7(), actor="user:1")
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    state = encode_state(event, at, meta)
    assert orjson.loads(state)["v"] == 1
    decoded = decode("DocumentDeleted", state)
    assert decoded.event == event
    assert decoded.occurred_at == at
    assert decoded.meta["actor"] == "user:1"
