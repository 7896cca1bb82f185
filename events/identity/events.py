"""Events of the identity context. Personal data is sealed (``*_sealed``); secrets never appear."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

from events.base import Event, register


@register
class EmailReserved(Event):
    """The keyed hash of a normalised email now belongs to ``user_id`` (one owner at a time)."""

    TYPE: ClassVar[str] = "EmailReserved"
    VERSION: ClassVar[int] = 1

    email_hmac: str
    user_id: str


@register
class EmailReleased(Event):
    TYPE: ClassVar[str] = "EmailReleased"
    VERSION: ClassVar[int] = 1

    email_hmac: str
    user_id: str


@register
class UserRegistered(Event):
    TYPE: ClassVar[str] = "UserRegistered"
    VERSION: ClassVar[int] = 1

    user_id: str
    email_hmac: str
    email_sealed: str
    name_sealed: str
    roles: list[str]


@register
class UserProfileUpdated(Event):
    TYPE: ClassVar[str] = "UserProfileUpdated"
    VERSION: ClassVar[int] = 1

    user_id: str
    name_sealed: str


@register
class EmailVerified(Event):
    TYPE: ClassVar[str] = "EmailVerified"
    VERSION: ClassVar[int] = 1

    user_id: str


@register
class RoleAssigned(Event):
    TYPE: ClassVar[str] = "RoleAssigned"
    VERSION: ClassVar[int] = 1

    user_id: str
    role: str


@register
class RoleRevoked(Event):
    TYPE: ClassVar[str] = "RoleRevoked"
    VERSION: ClassVar[int] = 1

    user_id: str
    role: str


@register
class UserDisabled(Event):
    TYPE: ClassVar[str] = "UserDisabled"
    VERSION: ClassVar[int] = 1

    user_id: str
    reason: str


@register
class UserDeleted(Event):
    """The user is erased: their data key is destroyed, so their sealed fields cannot be read."""

    TYPE: ClassVar[str] = "UserDeleted"
    VERSION: ClassVar[int] = 1

    user_id: str


@register
class PasswordChanged(Event):
    TYPE: ClassVar[str] = "PasswordChanged"
    VERSION: ClassVar[int] = 1

    user_id: str
    reason: str


@register
class ApiKeyCreated(Event):
    TYPE: ClassVar[str] = "ApiKeyCreated"
    VERSION: ClassVar[int] = 1

    user_id: str
    key_id: str
    name: str
    scopes: list[str]
    expires_at: datetime | None
    replaces: str | None = None
    replaces_until: datetime | None = None


@register
class ApiKeyRevoked(Event):
    TYPE: ClassVar[str] = "ApiKeyRevoked"
    VERSION: ClassVar[int] = 1

    user_id: str
    key_id: str


@register
class TwoFactorEnabled(Event):
    TYPE: ClassVar[str] = "TwoFactorEnabled"
    VERSION: ClassVar[int] = 1

    user_id: str


@register
class TwoFactorDisabled(Event):
    TYPE: ClassVar[str] = "TwoFactorDisabled"
    VERSION: ClassVar[int] = 1

    user_id: str


@register
class AuditEventRecorded(Event):
    """An auth flow's fact, recorded from the ingress (the actor is in the event's metadata)."""

    TYPE: ClassVar[str] = "AuditEventRecorded"
    VERSION: ClassVar[int] = 1

    action: str
    outcome: str
    subject: str
    ip: str
    session_id: str
    key_id: str
    detail: str
