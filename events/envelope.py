"""The envelope every command travels in, and its orjson wire format."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from events.base import Command, Message, load
from events.ids import uuid7

_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class MalformedEnvelopeError(ValueError):
    """Raised when bytes from Kafka are not a valid envelope (bad JSON or missing fields)."""


class Envelope(BaseModel):
    """Metadata around one message: who sent it, why, and how to follow it across processes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    message_id: uuid.UUID
    type: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1)
    occurred_at: datetime
    actor: str = Field(min_length=1, max_length=200)
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    traceparent: str | None = None
    actor_token: str | None = Field(default=None, max_length=8192)
    """A signed, short-lived token naming ``actor`` and its scopes; workers verify it, so a
    producer cannot act as someone else."""
    payload: dict[str, Any]

    @field_validator("traceparent")
    @classmethod
    def _w3c(cls, value: str | None) -> str | None:
        if value is not None and not _TRACEPARENT.match(value):
            raise ValueError("traceparent must be a W3C trace context header value")
        return value


def wrap(
    message: Message,
    *,
    actor: str,
    correlation_id: uuid.UUID | None = None,
    causation_id: uuid.UUID | None = None,
    traceparent: str | None = None,
    message_id: uuid.UUID | None = None,
    actor_token: str | None = None,
) -> Envelope:
    """Put a message in a new envelope; a fresh UUIDv7 id starts a new correlation by default."""
    mid = message_id or uuid7()
    return Envelope(
        message_id=mid,
        type=message.TYPE,
        version=message.VERSION,
        occurred_at=datetime.now(UTC),
        actor=actor,
        correlation_id=correlation_id or mid,
        causation_id=causation_id,
        traceparent=traceparent,
        actor_token=actor_token,
        payload=message.model_dump(mode="json"),
    )


def dumps(envelope: Envelope) -> bytes:
    return orjson.dumps(envelope.model_dump(mode="python"))


def loads(raw: bytes) -> Envelope:
    """Parse an envelope; raises MalformedEnvelopeError with a reason a human can act on."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MalformedEnvelopeError(f"body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedEnvelopeError("body is not a JSON object")
    try:
        return Envelope.model_validate(data)
    except ValidationError as exc:
        raise MalformedEnvelopeError(f"invalid envelope: {_brief(exc)}") from None


def open_command(envelope: Envelope) -> Command:
    """The typed command inside an envelope (upcast to the current version).

    Raises UnknownMessageTypeError or pydantic's ValidationError; both are permanent.
    """
    message = load(envelope.type, envelope.version, envelope.payload)
    if not isinstance(message, Command):
        from events.base import UnknownMessageTypeError

        raise UnknownMessageTypeError(f"{envelope.type} is not a command")
    return message


def _brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_url=False)[:10]
    )


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line, field-path-first summary of a validation error."""
    return _brief(exc)
