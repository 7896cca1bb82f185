"""The AsyncAPI 3.0 document of the registry's topics: per context its four channels, their
operations, and a message per command and public event; then the platform's components."""

from __future__ import annotations

import copy
import inspect
from typing import TYPE_CHECKING, Any

from events import jobs
from events.envelope import Envelope
from events.outcomes import CommandRejected, CommandSucceeded
from events.topics import command_topic, dead_letter_topic, event_topic, retry_topic
from infra.publisher import CommandPublisher
from infra.topics import RETRY_HEADROOM_BYTES

if TYPE_CHECKING:
    from contexts.base import Context, Registry
    from events.base import Command, Event
    from infra.settings import Settings
    from infra.topics import TopicSpec
from uait.asyncapi.notes import EXAMPLES, field_notes
from uait.asyncapi.platform import (
    BINDING_VERSION,
    COMMAND_HEADERS,
    EVENT_HEADERS,
    EVENT_META,
    INFO_DESCRIPTION,
    OUTCOME_SUMMARIES,
    RELAYED_EVENT,
    SCHEMAS,
    SERVERS,
    STORED_EVENT_STATE,
    WIDTH,
    default_settings,
)
from uait.asyncapi.prose import (
    Schemas,
    add_message,
    camel,
    group_of,
    phrase,
    public_events,
    sentence,
    size_text,
    summary_of,
    title_of,
    wrap,
)


def document(registry: Registry, settings: Settings | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``registry``'s topics (``settings``: the defaults)."""
    settings = settings or default_settings()
    specs = {spec.name: spec for spec in registry.topic_specs(settings)}
    schemas = Schemas(field_notes(settings))
    schemas.add("CommandHeaders", COMMAND_HEADERS)
    schemas.add_model(Envelope)
    schemas.add("RelayedEvent", RELAYED_EVENT)
    schemas.add("EventHeaders", EVENT_HEADERS)
    schemas.add("StoredEventState", STORED_EVENT_STATE)
    schemas.add("EventMeta", EVENT_META)
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for context in registry.contexts:
        channels.update(_channels(context, specs, settings))
        operations.update(_operations(context))
        for command in context.commands:
            add_message(messages, command.TYPE, _command_message(context, command))
            schemas.add_model(command)
        for event in public_events(context):
            add_message(messages, event.TYPE, _event_message(context, event))
            schemas.add_model(event)
    for outcome in (CommandSucceeded, CommandRejected):
        add_message(messages, outcome.TYPE, _outcome_message(outcome))
        schemas.add_model(outcome)
    schemas.check_notes()
    return {
        "asyncapi": "3.0.0",
        "id": "urn:uait:kafka",
        "info": {
            "title": "Universal AI Tools — Kafka topics",
            "version": "0.1.0",
            "description": INFO_DESCRIPTION,
            "license": {"name": "Apache-2.0"},
            "tags": [{"name": c.name, "description": c.summary} for c in registry.contexts],
        },
        "defaultContentType": "application/json",
        "servers": copy.deepcopy(SERVERS),
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "correlationIds": {
                "envelopeCorrelationId": {
                    "description": (
                        "The request a command belongs to (the first command's message_id by"
                        " default)."
                    ),
                    "location": "$message.payload#/correlation_id",
                }
            },
            "schemas": schemas.schemas,
        },
    }


def _channels(context: Context, specs: dict[str, TopicSpec], settings: Settings) -> dict[str, Any]:
    name, title = context.name, title_of(context.name)
    commands = command_topic(name)
    retries, dead, events = retry_topic(commands), dead_letter_topic(commands), event_topic(name)
    command_messages = [c.TYPE for c in context.commands]
    publisher = f"`{CommandPublisher.__module__}.{CommandPublisher.__qualname__}`"
    limit = size_text(settings.kafka_max_message_bytes)
    headroom = (
        f"Topic config `max.message.bytes`: the command topic's limit +"
        f" {size_text(RETRY_HEADROOM_BYTES)} for the headers the retry path adds."
    )
    public = [e.TYPE for e in public_events(context)]
    relayed = (
        "Command outcomes are internal and are not relayed."
        if public
        else f"The {name} context declares none yet: the topic is provisioned, but nothing is"
        " published to it."
    )
    return {
        f"{camel(name)}Commands": _channel(
            commands,
            f"{title} commands",
            f"Commands of the {name} context ({phrase(context.summary)}). Record key (UTF-8):"
            f" {context.record_key.rstrip('.')}. Partitions: `UAIT_COMMAND_PARTITIONS` (default"
            f" {settings.command_partitions}); topic config `max.message.bytes` ="
            f" `UAIT_KAFKA_MAX_MESSAGE_BYTES` (default {limit})."
            f" Producers: the HTTP ingress, `uait publish`, and {publisher} (acks=all).",
            command_messages,
            specs,
        ),
        f"{camel(name)}CommandsRetry": _channel(
            retries,
            f"{title} commands waiting for their next attempt",
            "A command whose decision failed transiently (a backend down, an external call past"
            " its timeout, an open circuit breaker) is republished here by the worker, with its"
            f" original key, value and headers plus `{jobs.FAILURES_HEADER}` (failed executions"
            f" so far), `{jobs.DUE_HEADER}` (ISO 8601; not executed before),"
            f" `{jobs.FIRST_FAILURE_HEADER}`, `{jobs.LAST_FAILURE_HEADER}` and"
            f" `{jobs.ORIGINAL_TOPIC_HEADER}`, `{jobs.ORIGINAL_PARTITION_HEADER}`,"
            f" `{jobs.ORIGINAL_OFFSET_HEADER}`. Later commands for the same aggregate follow it"
            " here (without a failure of their own) so that their order holds. The same"
            f" partitions as `{commands}`. {headroom} Consumer group: `{group_of(name)}.retry`.",
            command_messages,
            specs,
        ),
        f"{camel(name)}CommandsDeadLetters": _channel(
            dead,
            f"{title} dead letters",
            "Commands that failed transiently on every attempt (`UAIT_RETRY_ATTEMPTS`, or the"
            f" `{jobs.ATTEMPTS_HEADER}` header). The record is the original one (key, value,"
            f" headers) plus the retry headers and `{jobs.ERROR_TYPE_HEADER}`,"
            f" `{jobs.ERROR_MESSAGE_HEADER}`, `{jobs.TRACEBACK_DIGEST_HEADER}` (16 hex digits"
            f" naming the failing frames), `{jobs.DEAD_LETTER_ID_HEADER}`. Each record is indexed"
            " in PostgreSQL (`dead_letters`) for `uait dlq list|show|redrive|purge` and"
            " `/v1/admin/dlq`. A dead letter is not an outcome: a redrive publishes the record"
            f" back to `{commands}` once, with fresh attempts and `{jobs.REDRIVE_OF_HEADER}`."
            " Permanent errors (malformed, unknown type, invalid payload, a domain rule) never"
            f" come here: they are `CommandRejected` outcomes. {headroom}",
            command_messages,
            specs,
        ),
        f"{camel(name)}Events": _channel(
            events,
            f"{title} events",
            f"The public events of the {name} context, published by the event relay (`uait"
            " relay`) in store order, keyed by aggregate id (so one aggregate's events stay in"
            " order in one partition). Delivery is at-least-once: a consumer drops repeats by"
            " `event_id` (`<context>:<position>`, also a record header)."
            f" {relayed} Partitions: `UAIT_EVENT_PARTITIONS` (default"
            f" {settings.event_partitions}).",
            public,
            specs,
        ),
    }


def _channel(
    address: str, title: str, description: str, messages: list[str], specs: dict[str, TopicSpec]
) -> dict[str, Any]:
    spec = specs[address]
    return {
        "address": address,
        "title": title,
        "description": wrap(description),
        "messages": {m: {"$ref": f"#/components/messages/{m}"} for m in messages},
        "bindings": {
            "kafka": {
                "topic": spec.name,
                "partitions": spec.partitions,
                "replicas": 1,
                "topicConfiguration": {"max.message.bytes": int(spec.config["max.message.bytes"])},
                "bindingVersion": BINDING_VERSION,
            }
        },
    }


def _operations(context: Context) -> dict[str, Any]:
    name, short = context.name, camel(context.name)
    ctx = short[0].upper() + short[1:]
    commands = [c.TYPE for c in context.commands]
    operations = {
        f"send{ctx}Command": _operation(
            "send",
            f"Publish {name} commands",
            "Wrap the command in an envelope with a fresh UUIDv7 `message_id` (the command id),"
            f" key the record by {context.record_key}, and wait for acks=all. Follow the command"
            " at `GET /v1/commands/{message_id}`.",
            f"{short}Commands",
            commands,
        ),
        f"decide{ctx}Commands": _operation(
            "receive",
            f"Decide {name} commands (worker)",
            "Batch consumer (up to `UAIT_WORKER_BATCH_SIZE` records). One event-store transaction"
            " per batch holds the events and one outcome record per command; the offsets are"
            " committed after it. A failed batch is split in halves and decided again, so one"
            " conflicting or duplicated command never holds back the others.",
            f"{short}Commands",
            commands,
            _group_binding(group_of(name), client_id="uait-worker"),
        ),
        f"retry{ctx}Commands": _operation(
            "receive",
            f"Run {name} commands again once due (worker)",
            f"Each record runs once its `{jobs.DUE_HEADER}` has passed (at once when it was"
            " cancelled), after the records before it for the same aggregate; other aggregates"
            " never wait for it. One that fails again goes back to the retry topic, or past its"
            " last attempt to the DLQ.",
            f"{short}CommandsRetry",
            commands,
            _group_binding(f"{group_of(name)}.retry"),
        ),
        f"deadLetter{ctx}Commands": _operation(
            "send",
            f"Dead-letter {name} commands (worker)",
            "Past its last attempt, a command is published here and indexed in PostgreSQL.",
            f"{short}CommandsDeadLetters",
            commands,
        ),
    }
    public = [e.TYPE for e in public_events(context)]
    if public:
        operations[f"receive{ctx}Events"] = _operation(
            "receive",
            f"Follow {name} events (outside consumers)",
            "Public events, as published by the event relay; drop repeats by `event_id`.",
            f"{short}Events",
            public,
        )
    return operations


def _operation(
    action: str,
    title: str,
    description: str,
    channel: str,
    messages: list[str],
    bindings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": action,
        "title": title,
        "description": wrap(description),
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in messages],
    }
    if bindings is not None:
        operation["bindings"] = bindings
    return operation


def _group_binding(group: str, client_id: str | None = None) -> dict[str, Any]:
    kafka: dict[str, Any] = {"groupId": {"type": "string", "enum": [group]}}
    if client_id is not None:
        kafka["clientId"] = {"type": "string", "enum": [client_id]}
    kafka["bindingVersion"] = BINDING_VERSION
    return {"kafka": kafka}


def _command_message(context: Context, command: type[Command]) -> dict[str, Any]:
    permission = (
        f"Permission: `{command.PERMISSION}` (the ingress authorises the request with it, and the"
        " worker checks that the command's actor token carries it)."
    )
    if "required_permission" in vars(command):
        # A command that asks more for some payloads says so on its override.
        permission += " " + sentence(inspect.getdoc(vars(command)["required_permission"]) or "")
    message: dict[str, Any] = {
        "name": command.TYPE,
        "title": f"{command.TYPE} v{command.VERSION}",
        "summary": summary_of(
            command, f"The {command.TYPE} command of the {context.name} context."
        ),
        "description": wrap(permission),
        "contentType": "application/json",
        "tags": [{"name": context.name}],
        "headers": {"$ref": SCHEMAS + "CommandHeaders"},
        "payload": {
            "allOf": [
                {"$ref": SCHEMAS + "Envelope"},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": command.TYPE},
                        "version": {"const": command.VERSION},
                        "payload": {"$ref": SCHEMAS + command.TYPE},
                    },
                },
            ]
        },
        "correlationId": {"$ref": "#/components/correlationIds/envelopeCorrelationId"},
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": wrap(sentence(context.record_key), WIDTH - 20),
                },
                "bindingVersion": BINDING_VERSION,
            }
        },
    }
    return _with_examples(message)


def _event_message(context: Context, event: type[Event]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": event.TYPE,
        "title": f"{event.TYPE} v{event.VERSION}",
        "summary": summary_of(event, f"The {event.TYPE} event of the {context.name} context."),
        "contentType": "application/json",
        "tags": [{"name": context.name}],
        "headers": {"$ref": SCHEMAS + "EventHeaders"},
        "payload": {
            "allOf": [
                {"$ref": SCHEMAS + "RelayedEvent"},
                {
                    "type": "object",
                    "properties": {
                        "type": {"const": event.TYPE},
                        "version": {"const": event.VERSION},
                        "data": {"$ref": SCHEMAS + event.TYPE},
                    },
                },
            ]
        },
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The aggregate id (UTF-8).",
                },
                "bindingVersion": BINDING_VERSION,
            }
        },
    }
    return _with_examples(message)


def _outcome_message(outcome: type[Event]) -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": outcome.TYPE,
        "title": f"{outcome.TYPE} v{outcome.VERSION}",
        "summary": OUTCOME_SUMMARIES[outcome.TYPE],
        "contentType": "application/json",
        "payload": {
            "allOf": [
                {"$ref": SCHEMAS + "StoredEventState"},
                {
                    "type": "object",
                    "properties": {
                        "v": {"const": outcome.VERSION},
                        "data": {"$ref": SCHEMAS + outcome.TYPE},
                    },
                },
            ]
        },
    }
    return _with_examples(message)


def _with_examples(message: dict[str, Any]) -> dict[str, Any]:
    examples = EXAMPLES.get(message["name"])
    if examples:
        message["examples"] = copy.deepcopy(examples)
    return message
