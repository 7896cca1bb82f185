"""Commands of the identity context.

Secrets never travel here: password hashes, TOTP secrets and API-key hashes are written to
credential tables by the ingress before it publishes the command. Personal data (email, name) is
sealed with the user's own data key (``*_sealed``), so erasing a user means destroying that key.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from pydantic import Field, StringConstraints

from events.base import Command, register
from events.identity.roles import AUDIT_WRITE, REGISTER, SELF

UserId = Annotated[
    str,
    StringConstraints(pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
]
Sealed = Annotated[
    str, StringConstraints(min_length=4, max_length=4096, pattern=r"^v1\.[A-Za-z0-9_-]+$")
]
EmailHmac = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Role = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}$")]
Scope = Annotated[
    str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,39}(:[a-z][a-z0-9_-]{0,39})?$")
]
KeyId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]{8,32}$")]
Label = Annotated[str, StringConstraints(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]

AuditOutcome = Literal["ok", "failed", "refused"]


class IdentityCommand(Command):
    CONTEXT: ClassVar[str] = "identity"
    user_id: UserId

    def partition_key(self) -> str:
        return self.user_id

    def subject_user(self) -> str | None:
        return self.user_id


@register
class RegisterUser(IdentityCommand):
    """Create a user, reserving the email (by its keyed hash) so it can be registered only once."""

    TYPE: ClassVar[str] = "RegisterUser"
    PERMISSION: ClassVar[str] = REGISTER
    VERSION: ClassVar[int] = 1

    email_hmac: EmailHmac
    email_sealed: Sealed
    name_sealed: Sealed
    roles: Annotated[list[Role], Field(min_length=1, max_length=20)] = ["user"]

    def required_permission(self) -> str:
        """Registering with more than the plain user role is an administrator's act."""
        return "users:write" if set(self.roles) - {"user"} else self.PERMISSION


@register
class UpdateUserProfile(IdentityCommand):
    """Change what a user may change about themselves: their display name."""

    TYPE: ClassVar[str] = "UpdateUserProfile"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1

    name_sealed: Sealed


@register
class AssignRole(IdentityCommand):
    TYPE: ClassVar[str] = "AssignRole"
    PERMISSION: ClassVar[str] = "users:write"
    VERSION: ClassVar[int] = 1

    role: Role


@register
class RevokeRole(IdentityCommand):
    TYPE: ClassVar[str] = "RevokeRole"
    PERMISSION: ClassVar[str] = "users:write"
    VERSION: ClassVar[int] = 1

    role: Role


@register
class DisableUser(IdentityCommand):
    TYPE: ClassVar[str] = "DisableUser"
    PERMISSION: ClassVar[str] = "users:write"
    VERSION: ClassVar[int] = 1

    reason: Label = ""


@register
class DeleteUser(IdentityCommand):
    """Erase a user: the email is released and the user's data key is destroyed."""

    TYPE: ClassVar[str] = "DeleteUser"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1

    email_hmac: EmailHmac
    """The user's email hash (from the users read model): the reservation to release."""


@register
class ChangePassword(IdentityCommand):
    """Record that the password changed (the new hash is already in the credential table)."""

    TYPE: ClassVar[str] = "ChangePassword"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1

    reason: Literal["changed", "reset", "rehashed"] = "changed"


@register
class VerifyEmail(IdentityCommand):
    TYPE: ClassVar[str] = "VerifyEmail"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1


@register
class CreateApiKey(IdentityCommand):
    """Record an API key's facts; its secret's hash is in the credential table, never here."""

    TYPE: ClassVar[str] = "CreateApiKey"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1

    key_id: KeyId
    name: Label = ""
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=30)]
    expires_at: datetime | None = None
    replaces: KeyId | None = None
    """A rotation: the key this one replaces keeps working until ``replaces_until``."""
    replaces_until: datetime | None = None


@register
class RevokeApiKey(IdentityCommand):
    TYPE: ClassVar[str] = "RevokeApiKey"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1

    key_id: KeyId


@register
class EnableTwoFactor(IdentityCommand):
    TYPE: ClassVar[str] = "EnableTwoFactor"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1


@register
class DisableTwoFactor(IdentityCommand):
    TYPE: ClassVar[str] = "DisableTwoFactor"
    PERMISSION: ClassVar[str] = SELF
    VERSION: ClassVar[int] = 1


@register
class RecordAuditEvent(IdentityCommand):
    """An auth flow that ran synchronously at the ingress (login, refresh, key use, ...).

    ``user_id`` is the subject (the all-zero id when none is known, e.g. a failed login for an
    unknown email); each such command gets its own stream, so recording never conflicts.
    """

    TYPE: ClassVar[str] = "RecordAuditEvent"
    PERMISSION: ClassVar[str] = AUDIT_WRITE
    VERSION: ClassVar[int] = 1

    record_id: UserId
    """A fresh id per record: its own stream, and its partition key."""
    action: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.]{0,63}$")]
    outcome: AuditOutcome = "ok"
    ip: Annotated[str, StringConstraints(max_length=64)] = ""
    session_id: Annotated[str, StringConstraints(max_length=64)] = ""
    key_id: Annotated[str, StringConstraints(max_length=64)] = ""
    detail: Label = ""

    def partition_key(self) -> str:
        return self.record_id
