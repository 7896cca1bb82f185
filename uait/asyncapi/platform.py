"""The platform's parts of the AsyncAPI document, written once: the servers, the record
headers, the stored and relayed event shapes, the outcome summaries, and the settings the
document is generated with (the defaults alone)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from events.outcomes import CommandRejected, CommandSucceeded
from infra.settings import Settings

if TYPE_CHECKING:
    from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


DEFAULT_OUTPUT = Path("docs/asyncapi.yaml")
BINDING_VERSION = "0.5.0"
SCHEMAS = "#/components/schemas/"
WIDTH = 92
"""Generated prose is wrapped to this width (it is indented by at most 8 in the YAML)."""
KIB = 1024
MIB = 1024 * KIB
CODE_SPAN = re.compile(r"`[^`]*`")
NBSP = "\x00"
TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


class _Defaults(Settings):
    """The settings' defaults alone: no environment, no ``.env``, so every run says the same."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def default_settings() -> Settings:
    return _Defaults()


# --------------------------------------------------------------------------- the platform's texts

INFO_DESCRIPTION = """\
The Kafka topics of the Universal AI Tools backend.

Every state change enters as a **command** on `uait.commands.<context>`, in the envelope of
`events/envelope.py`, keyed by the aggregate it addresses (each command channel says which),
so commands for one aggregate keep their order. A worker group (`uait.workers.<context>`)
decides each batch of commands against the event store and records, in the same transaction,
exactly one outcome per command (`CommandSucceeded` or `CommandRejected`). Offsets are
committed only after that transaction commits.

The broker used in development (Tansu) has no idempotent producer: the same command may appear
twice on a topic. That is harmless: a command's outcome record is keyed by its `message_id`,
so a redelivered or duplicated command never takes effect twice.

JSON schemas below are generated from the pydantic models (`model_json_schema()`); the models
also check what JSON Schema cannot say (noted in the field descriptions).

This document is generated from the context registry by `uait asyncapi` (`uait/asyncapi.py`);
do not edit it by hand.
"""

SERVERS: dict[str, Any] = {
    "dev": {
        "host": "127.0.0.1",
        "protocol": "kafka",
        "description": (
            "The embedded broker that `uait dev` starts (Tansu, Kafka wire protocol, memory\n"
            "storage, on a free port printed at start-up). Set `UAIT_KAFKA_BOOTSTRAP` to use\n"
            "another cluster.\n"
        ),
    },
    "production": {
        "host": "{bootstrap}",
        "protocol": "kafka",
        "description": (
            "Apache Kafka 3.x (or a Kafka-compatible service) named by `UAIT_KAFKA_BOOTSTRAP`."
        ),
        "variables": {
            "bootstrap": {"description": "A bootstrap server list, host:port[,host:port...]."}
        },
    },
}

COMMAND_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": (
        "Kafka record headers (UTF-8 bytes) copied from the envelope, so a consumer can route or\n"
        "trace a record without parsing its value. `traceparent` is present only when the\n"
        "envelope has one.\n"
    ),
    "properties": {
        "message_id": {"type": "string", "format": "uuid"},
        "type": {"type": "string"},
        "version": {"type": "string", "pattern": "^[0-9]+$"},
        "correlation_id": {"type": "string", "format": "uuid"},
        "traceparent": {"type": "string", "pattern": TRACEPARENT},
    },
    "required": ["message_id", "type", "version", "correlation_id"],
}

EVENT_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": (
        "Kafka record headers (UTF-8 bytes) the relay sets on a public event. `traceparent` is\n"
        "present only when the worker that recorded the event was traced.\n"
    ),
    "properties": {
        "event_id": {"type": "string"},
        "type": {"type": "string"},
        "traceparent": {"type": "string", "pattern": TRACEPARENT},
    },
    "required": ["event_id", "type"],
}

RELAYED_EVENT: dict[str, Any] = {
    "type": "object",
    "description": "A public event as the relay publishes it on `uait.events.<context>`.",
    "properties": {
        "event_id": {
            "type": "string",
            "description": "`<context>:<position>`: unique, the same on a repeat.",
        },
        "position": {
            "type": "integer",
            "description": "Position in the context's event store (store order).",
        },
        "type": {"type": "string"},
        "version": {
            "type": "integer",
            "minimum": 1,
            "description": "Version of the event type (older stored versions are upcast first).",
        },
        "occurred_at": {"type": "string", "format": "date-time"},
        "aggregate_id": {"type": "string", "format": "uuid"},
        "aggregate_version": {"type": "integer"},
        "meta": {"$ref": SCHEMAS + "EventMeta"},
        "data": {
            "type": "object",
            "description": "The event itself; its schema depends on the type.",
        },
    },
    "required": [
        "event_id",
        "position",
        "type",
        "version",
        "occurred_at",
        "aggregate_id",
        "aggregate_version",
        "meta",
        "data",
    ],
}

STORED_EVENT_STATE: dict[str, Any] = {
    "type": "object",
    "description": (
        "An event as kept in the event store (`events/stored.py`). The event type name is the\n"
        "stored topic; `v` is the version of that type, and older versions are upcast on read.\n"
    ),
    "properties": {
        "v": {"type": "integer", "minimum": 1, "description": "Version of the event type."},
        "at": {
            "type": "string",
            "format": "date-time",
            "description": "When the worker recorded it.",
        },
        "meta": {"$ref": SCHEMAS + "EventMeta"},
        "data": {
            "type": "object",
            "description": "The event itself; its schema depends on the type.",
        },
    },
    "required": ["v", "at", "meta", "data"],
}

EVENT_META: dict[str, Any] = {
    "type": "object",
    "description": "Why an event happened.",
    "properties": {
        "command_id": {
            "type": "string",
            "format": "uuid",
            "description": "The message_id of the command that caused it.",
        },
        "correlation_id": {"type": "string", "format": "uuid"},
        "actor": {"type": "string"},
    },
    "required": ["command_id", "correlation_id", "actor"],
}

OUTCOME_SUMMARIES = {
    CommandSucceeded.TYPE: (
        "The one outcome of a command that was accepted: version 1 of the per-command aggregate"
        " (id = uuid5 of the command's message_id), stored with the events it caused."
    ),
    CommandRejected.TYPE: (
        "The one outcome of a command refused for a permanent reason (over HTTP: not_found 404,"
        " too_large 413, domain 409, invalid / unknown_type / malformed 422)."
    ),
}
