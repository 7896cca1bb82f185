"""What the generated JSON schemas cannot say (checks made by the models' validators), and the
examples the document shows, by message type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from uait.asyncapi.platform import TRACEPARENT

if TYPE_CHECKING:
    from infra.settings import Settings

_CONTROL = "no control characters other than tab, newline and CR"


def field_notes(settings: Settings) -> dict[str, dict[str, dict[str, Any]]]:
    """What the generated schemas do not say: schema name -> JSON pointer in it -> keys to set.

    A note whose pointer no longer resolves stops the generator, so notes cannot outlive their
    field.
    """
    return {
        "Envelope": {
            "": {
                "description": (
                    "Metadata around one message: who sent it, why, and how to follow it across"
                    " processes. `message_id` is a UUIDv7 (time-ordered) and is the command id."
                )
            },
            "properties/actor": {
                "description": (
                    "Who sent it (`anonymous` from the HTTP ingress; `cli` from `uait publish`)."
                )
            },
            "properties/traceparent": {
                "description": "A W3C trace context `traceparent` header value."
            },
            "properties/traceparent/anyOf/0": {"pattern": TRACEPARENT},
            "properties/actor_token": {
                "description": (
                    "A signed, short-lived token naming `actor` and its scopes; workers verify"
                    " it, so a producer cannot act as someone else."
                )
            },
        },
        "IngestDocument": {
            "properties/title": {"description": f"Not blank; {_CONTROL}."},
            "properties/text": {
                "description": (
                    f"Not blank; {_CONTROL}; at most UAIT_MAX_TEXT_BYTES bytes of UTF-8"
                    f" (default {settings.max_text_bytes})."
                )
            },
            "properties/source": {"description": f"{_CONTROL.capitalize()}."},
            "properties/tags/items": {
                "description": "Surrounding whitespace is stripped; no control characters."
            },
        },
        "CommandSucceeded": {
            "properties/events": {
                "description": "The events the command caused, as `Type:aggregate_id:version`."
            }
        },
        "CommandRejected": {
            "properties/command_type": {
                "description": "`unknown` when the record was not a readable envelope."
            },
            "properties/reason": {
                "description": "A human-readable reason, at most 2000 characters."
            },
        },
    }


_EXAMPLE_ID = "01a2149c-401c-739a-85bd-21c76a6500e6"
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "IngestDocument": [
        {
            "name": "ingest",
            "summary": "A document sent through the HTTP ingress.",
            "headers": {
                "message_id": _EXAMPLE_ID,
                "type": "IngestDocument",
                "version": "1",
                "correlation_id": _EXAMPLE_ID,
            },
            "payload": {
                "message_id": _EXAMPLE_ID,
                "type": "IngestDocument",
                "version": 1,
                "occurred_at": "2026-11-25T21:28:34.076854+00:00",
                "actor": "anonymous",
                "correlation_id": _EXAMPLE_ID,
                "causation_id": None,
                "traceparent": None,
                "payload": {
                    "document_id": "handbook",
                    "title": "Employee handbook",
                    "text": "Welcome aboard...",
                    "source": "https://intranet.example/handbook",
                    "tags": ["hr"],
                },
            },
        }
    ],
    "DeleteDocument": [
        {
            "name": "delete",
            "headers": {
                "message_id": "01a2149c-5a10-7c41-9f0e-3d5b8a2c7e11",
                "type": "DeleteDocument",
                "version": "1",
                "correlation_id": "01a2149c-5a10-7c41-9f0e-3d5b8a2c7e11",
            },
            "payload": {
                "message_id": "01a2149c-5a10-7c41-9f0e-3d5b8a2c7e11",
                "type": "DeleteDocument",
                "version": 1,
                "occurred_at": "2026-11-25T21:29:10.512300+00:00",
                "actor": "anonymous",
                "correlation_id": "01a2149c-5a10-7c41-9f0e-3d5b8a2c7e11",
                "causation_id": None,
                "traceparent": None,
                "payload": {"document_id": "handbook"},
            },
        }
    ],
    "CommandSucceeded": [
        {
            "name": "succeeded",
            "payload": {
                "v": 1,
                "at": "2026-11-25T21:28:34.091000+00:00",
                "meta": {
                    "command_id": _EXAMPLE_ID,
                    "correlation_id": _EXAMPLE_ID,
                    "actor": "anonymous",
                },
                "data": {
                    "command_id": _EXAMPLE_ID,
                    "command_type": "IngestDocument",
                    "aggregate_id": "04366f5a-4ecd-5276-9372-f567c82a51b5",
                    "detail": "version 1",
                    "events": ["DocumentIngested:04366f5a-4ecd-5276-9372-f567c82a51b5:1"],
                },
            },
        }
    ],
}
"""Hand-written examples, by message type; a type no longer in the registry just has none."""


# --------------------------------------------------------------------------------- the document
