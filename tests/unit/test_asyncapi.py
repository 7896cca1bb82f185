"""docs/asyncapi.yaml describes the topics the service provisions, and its references resolve."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import yaml

from contexts import REGISTRY
from events.outcomes import RejectionCode
from infra.settings import Settings

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
