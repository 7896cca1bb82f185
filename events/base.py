"""Base classes and the registry of every versioned message type (commands and events)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UnknownMessageTypeError(LookupError):
    """Raised when a message names a type, or a version of it, that this code does not know."""


class Message(BaseModel):
    """A frozen, versioned payload. ``TYPE`` is its stable name on the wire and in the store."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1


class Command(Message):
    """An imperative request to change state; decided by exactly one worker.

    ``PERMISSION`` is what the actor must hold to send it: the ingress authorises the request
    with it, and the workers check that the command's actor token carries it.
    """

    CONTEXT: ClassVar[str]
    PERMISSION: ClassVar[str]

    def partition_key(self) -> str:
        """The aggregate this command addresses: its Kafka key, so per-aggregate order holds."""
        raise NotImplementedError

    def required_permission(self) -> str:
        """The permission this command needs (some commands need more for some payloads)."""
        return self.PERMISSION

    def subject_user(self) -> str | None:
        """The user this command acts on, when it acts on one user's own account: such a
        command is also allowed to that user alone (``account:self``)."""
        return None


class Event(Message):
    """A fact that happened; stored append-only.

    ``PUBLIC`` events are relayed to ``uait.events.<context>`` for outside consumers; the others
    (such as command outcomes) stay internal.
    """

    PUBLIC: ClassVar[bool] = False


M = TypeVar("M", bound=type[Message])

_types: dict[str, type[Message]] = {}
# (type, stored version) -> function turning that version's dict into the next version's.
_upcasters: dict[tuple[str, int], Upcaster] = {}


def register(cls: M) -> M:
    """Class decorator: make a message type known by its ``TYPE``."""
    existing = _types.get(cls.TYPE)
    if existing is not None and existing is not cls:
        raise ValueError(f"message type {cls.TYPE!r} registered twice")
    _types[cls.TYPE] = cls
    return cls


def upcaster(type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register a function that turns ``from_version`` of a type into ``from_version + 1``."""

    def decorate(fn: Upcaster) -> Upcaster:
        _upcasters[(type_name, from_version)] = fn
        return fn

    return decorate


def message_class(type_name: str) -> type[Message]:
    try:
        return _types[type_name]
    except KeyError:
        raise UnknownMessageTypeError(f"unknown message type {type_name!r}") from None


def load(type_name: str, version: int, data: dict[str, Any]) -> Message:
    """Validate ``data`` stored or sent as ``version`` of ``type_name``, upcasting old versions.

    Raises UnknownMessageTypeError for an unknown type or a version newer than this code, and
    pydantic's ValidationError when the data does not fit.
    """
    cls = message_class(type_name)
    if version > cls.VERSION or version < 1:
        raise UnknownMessageTypeError(
            f"{type_name} version {version} is not supported (this code knows 1..{cls.VERSION})"
        )
    while version < cls.VERSION:
        step = _upcasters.get((type_name, version))
        if step is None:
            raise UnknownMessageTypeError(f"no upcaster for {type_name} v{version}")
        data = step(data)
        version += 1
    return cls.model_validate(data)


def known_types() -> dict[str, type[Message]]:
    return dict(_types)


def public_event_types() -> frozenset[str]:
    return frozenset(name for name, cls in _types.items() if issubclass(cls, Event) and cls.PUBLIC)
