"""How an event is kept in the event store: its topic is the type name, its state orjson.

Stored state: ``{"v": version, "at": iso time, "meta": {...}, "data": {...}}``. The type name
(not a Python class path) is the stored topic, so projections and outside consumers decode
events without importing worker code, and renaming a module never orphans history.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from events.base import Event, load

if TYPE_CHECKING:
    import uuid


@dataclass(frozen=True)
class EventMeta:
    """Why an event happened: the command that caused it and the request it belongs to."""

    command_id: uuid.UUID
    correlation_id: uuid.UUID
    actor: str
    traceparent: str | None = None
    """The W3C trace context of the worker's span, so projections join the request's trace."""

    def as_dict(self) -> dict[str, str]:
        meta = {
            "command_id": str(self.command_id),
            "correlation_id": str(self.correlation_id),
            "actor": self.actor,
        }
        if self.traceparent:
            meta["traceparent"] = self.traceparent
        return meta


@dataclass(frozen=True)
class DecodedEvent:
    event: Event
    occurred_at: datetime
    meta: dict[str, Any]


def encode_state(event: Event, occurred_at: datetime, meta: EventMeta) -> bytes:
    return orjson.dumps(
        {
            "v": event.VERSION,
            "at": occurred_at,
            "meta": meta.as_dict(),
            "data": event.model_dump(mode="json"),
        }
    )


def decode(topic: str, state: bytes) -> DecodedEvent:
    raw = orjson.loads(state)
    event = load(topic, raw["v"], raw["data"])
    assert isinstance(event, Event), topic
    return DecodedEvent(
        event=event, occurred_at=datetime.fromisoformat(raw["at"]), meta=raw.get("meta", {})
    )
