"""docs/asyncapi.yaml is generated from the context registry, describes the topics the service
provisions and every message on them, and its references resolve."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, ClassVar

import yaml

from contexts import REGISTRY
from contexts.base import Registry
from events.base import Command, Event
from events.base import load as load_message
from events.envelope import Envelope
from events.outcomes import CommandSucceeded, RejectionCode
from events.topics import command_topic, dead_letter_topic, event_topic, retry_topic
from infra.settings import Settings
from uait.asyncapi import document, render

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def load() -> dict[str, Any]:
    return yaml.safe_load(DOC.read_text(encoding="utf-8"))


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        assert part in node, f"{ref} does not resolve (no {part!r})"
        node = node[part]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def test_the_document_is_asyncapi_3_and_every_reference_resolves():
    doc = load()
    assert doc["asyncapi"] == "3.0.0"
    found = refs(doc)
    assert found
    for ref in found:
        resolve(doc, ref)


def test_every_provisioned_topic_is_a_channel_with_its_partitions():
    settings = Settings()
    channels = {c["address"]: c for c in load()["channels"].values()}
    for spec in REGISTRY.topic_specs(settings):
        assert spec.name in channels, f"{spec.name} is not described"
        binding = channels[spec.name]["bindings"]["kafka"]
        assert binding["topic"] == spec.name
        assert binding["partitions"] == spec.partitions
        limit = binding["topicConfiguration"]["max.message.bytes"]
        assert limit == int(spec.config["max.message.bytes"]), spec.name


def test_every_operation_names_a_channel_and_messages_of_that_channel():
    doc = load()
    for name, operation in doc["operations"].items():
        assert operation["action"] in {"send", "receive"}, name
        channel = resolve(doc, operation["channel"]["$ref"])
        prefix = operation["channel"]["$ref"] + "/messages/"
        for message in operation.get("messages", []):
            assert message["$ref"].startswith(prefix), f"{name}: {message['$ref']}"
            assert message["$ref"][len(prefix) :] in channel["messages"]


def test_the_rejection_codes_match_the_outcome_model():
    schema = resolve(load(), "#/components/schemas/CommandRejected")
    codes = schema["properties"]["code"]["enum"]
    assert codes == list(typing.get_args(RejectionCode))


def channel_at(doc: dict[str, Any], address: str) -> dict[str, Any]:
    found = [c for c in doc["channels"].values() if c["address"] == address]
    assert len(found) == 1, f"{len(found)} channels are at {address}"
    return found[0]


def test_the_committed_document_is_the_generated_one():
    assert DOC.read_text(encoding="utf-8") == render(REGISTRY), (
        "docs/asyncapi.yaml is not the document the registry generates: run `uait asyncapi`"
    )


def test_every_command_of_every_context_is_a_message_of_its_command_channel():
    doc = load()
    for context in REGISTRY.contexts:
        types = [c.TYPE for c in context.commands]
        assert types, f"{context.name} declares no command"
        topic = command_topic(context.name)
        for address in (topic, retry_topic(topic), dead_letter_topic(topic)):
            assert list(channel_at(doc, address)["messages"]) == types, address
        for command in context.commands:
            message = doc["components"]["messages"][command.TYPE]
            assert message["tags"] == [{"name": context.name}]
            _, body = message["payload"]["allOf"]
            assert body["properties"]["type"] == {"const": command.TYPE}
            assert body["properties"]["version"] == {"const": command.VERSION}
            schema = resolve(doc, body["properties"]["payload"]["$ref"])
            assert set(schema["properties"]) == set(command.model_fields), command.TYPE


def test_every_public_event_is_a_message_of_its_event_channel():
    doc = load()
    messages = doc["components"]["messages"]
    for context in REGISTRY.contexts:
        public = [e.TYPE for e in context.events if e.PUBLIC]
        channel = channel_at(doc, event_topic(context.name))
        assert list(channel["messages"]) == public, context.name
        for event in context.events:
            if not event.PUBLIC:
                assert event.TYPE not in messages, f"{event.TYPE} is internal"
                continue
            _, body = messages[event.TYPE]["payload"]["allOf"]
            assert body["properties"]["version"] == {"const": event.VERSION}
            schema = resolve(doc, body["properties"]["data"]["$ref"])
            assert set(schema["properties"]) == set(event.model_fields), event.TYPE


def test_every_example_is_a_message_the_service_accepts():
    messages = load()["components"]["messages"]
    examples = [(n, e) for n, m in messages.items() for e in m.get("examples", [])]
    assert examples
    for name, example in examples:
        if "message_id" in example["payload"]:  # a command in its envelope
            envelope = Envelope.model_validate(example["payload"])
            assert envelope.type == name == example["headers"]["type"]
            assert str(envelope.message_id) == example["headers"]["message_id"]
            load_message(envelope.type, envelope.version, envelope.payload)
        else:  # a stored outcome
            assert name == CommandSucceeded.TYPE
            CommandSucceeded.model_validate(example["payload"]["data"])


class TakeNote(Command):
    """Write a note down."""

    TYPE: ClassVar[str] = "TakeNote"
    CONTEXT: ClassVar[str] = "notes"
    PERMISSION: ClassVar[str] = "notes:write"
    note_id: str
    text: str


class NoteTaken(Event):
    TYPE: ClassVar[str] = "NoteTaken"
    PUBLIC: ClassVar[bool] = True
    note_id: str


class NoteIndexed(Event):
    TYPE: ClassVar[str] = "NoteIndexed"
    note_id: str


def test_a_new_context_appears_in_the_document_without_editing_the_generator():
    notes = dataclasses.replace(
        REGISTRY.contexts[0],
        name="notes",
        summary="Notes.",
        commands=(TakeNote,),
        events=(NoteTaken, NoteIndexed),
        record_key="the command's `note_id`",
        grants={},
        rate_limits={},
        cli=(),
    )
    doc = document(Registry(*REGISTRY.contexts, notes), Settings())
    assert {"notesCommands", "notesCommandsRetry", "notesCommandsDeadLetters", "notesEvents"} <= (
        doc["channels"].keys()
    )
    assert list(doc["channels"]["notesCommandsRetry"]["messages"]) == ["TakeNote"]
    assert list(doc["channels"]["notesEvents"]["messages"]) == ["NoteTaken"]
    assert "the command's `note_id`" in doc["channels"]["notesCommands"]["description"]
    assert doc["operations"]["decideNotesCommands"]["bindings"]["kafka"]["groupId"]["enum"] == [
        "uait.workers.notes"
    ]
    assert {"sendNotesCommand", "retryNotesCommands", "deadLetterNotesCommands"} <= (
        doc["operations"].keys()
    )
    assert doc["operations"]["receiveNotesEvents"]["messages"] == [
        {"$ref": "#/channels/notesEvents/messages/NoteTaken"}
    ]
    assert doc["components"]["messages"]["TakeNote"]["summary"] == "Write a note down."
    assert "NoteIndexed" not in doc["components"]["messages"]
    assert {"TakeNote", "NoteTaken"} <= doc["components"]["schemas"].keys()
    for ref in refs(doc):
        resolve(doc, ref)
