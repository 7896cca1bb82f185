"""The scope each command's actor token must carry (checked by the workers)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.identity.commands import RegisterUser
from events.identity.roles import ADMIN, AUDIT_WRITE, REGISTER, SELF

if TYPE_CHECKING:
    from events.base import Command


# The scope a command's actor token must carry. Commands on one user (``account:self``) are
# also allowed to that user only, unless the token carries ``users:write``.
COMMAND_SCOPES: dict[str, str] = {
    "IngestDocument": "knowledge:write",
    "DeleteDocument": "knowledge:write",
    "RegisterUser": REGISTER,
    "RecordAuditEvent": AUDIT_WRITE,
    "AssignRole": "users:write",
    "RevokeRole": "users:write",
    "DisableUser": "users:write",
    "UpdateUserProfile": SELF,
    "DeleteUser": SELF,
    "ChangePassword": SELF,
    "VerifyEmail": SELF,
    "CreateApiKey": SELF,
    "RevokeApiKey": SELF,
    "EnableTwoFactor": SELF,
    "DisableTwoFactor": SELF,
}


def required_scope(command: Command) -> str:
    """The scope ``command`` needs; registering with more than the plain user role is an
    administrator's act."""
    if isinstance(command, RegisterUser) and set(command.roles) - {"user"}:
        return "users:write"
    return COMMAND_SCOPES.get(command.TYPE, ADMIN)
