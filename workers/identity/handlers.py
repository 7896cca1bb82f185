"""Decisions of the identity context."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from events.identity import commands as c
from events.ids import email_reservation_id
from workers.decisions import Verdict
from workers.identity.user import AuditRecord, EmailReservation, User, UserNotFoundError

if TYPE_CHECKING:
    from collections.abc import Callable

    from events.base import Command
    from workers.decisions import Streams


@dataclass(frozen=True)
class IdentityDecider:
    context: str = c.IdentityCommand.CONTEXT

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        assert isinstance(command, c.IdentityCommand)
        if isinstance(command, c.RecordAuditEvent):
            return [uuid.UUID(command.record_id)]
        ids = [uuid.UUID(command.user_id)]
        if isinstance(command, c.RegisterUser | c.DeleteUser):
            ids.append(email_reservation_id(command.email_hmac))
        return ids

    @property
    def commands(self) -> frozenset[type[Command]]:
        return frozenset(_RECORD_DECISIONS) | frozenset(_USER_DECISIONS)

    def decide(self, command: Command, streams: Streams) -> Verdict:
        assert isinstance(command, c.IdentityCommand)
        decision = _RECORD_DECISIONS.get(type(command))
        if decision is not None:
            return decision(command, streams)
        change = _USER_DECISIONS.get(type(command))
        if change is None:
            raise TypeError(f"no decision for {type(command).__name__}")
        user = streams.get(uuid.UUID(command.user_id), User)
        changed = change(user, command)
        return Verdict(user.id, "changed" if changed else "unchanged")


def _audit(command: c.RecordAuditEvent, streams: Streams) -> Verdict:
    record = streams.get(uuid.UUID(command.record_id), AuditRecord)
    record.write(command)
    return Verdict(record.id, command.action)


def _register(command: c.RegisterUser, streams: Streams) -> Verdict:
    user = streams.get(uuid.UUID(command.user_id), User)
    reservation = streams.get(email_reservation_id(command.email_hmac), EmailReservation)
    reservation.reserve(command.email_hmac, user.user_id)
    user.register(command)
    return Verdict(user.id, "registered")


def _delete(command: c.DeleteUser, streams: Streams) -> Verdict:
    user = streams.get(uuid.UUID(command.user_id), User)
    if user.exists and user.email_hmac != command.email_hmac:
        raise UserNotFoundError("the email hash does not match the user")
    user.delete()
    reservation = streams.get(email_reservation_id(command.email_hmac), EmailReservation)
    reservation.release(command.email_hmac, user.user_id)
    return Verdict(user.id, "erased")


def _profile(user: User, command: c.UpdateUserProfile) -> bool:
    user.update_profile(command)
    return True


def _password(user: User, command: c.ChangePassword) -> bool:
    user.change_password(command.reason)
    return True


def _create_key(user: User, command: c.CreateApiKey) -> bool:
    user.create_api_key(command)
    return True


def _revoke_key(user: User, command: c.RevokeApiKey) -> bool:
    user.revoke_api_key(command.key_id)
    return True


# Commands decided on more than the user's own stream (email reservations, audit records).
_RECORD_DECISIONS: dict[type[Command], Callable[[Any, Streams], Verdict]] = {
    c.RecordAuditEvent: _audit,
    c.RegisterUser: _register,
    c.DeleteUser: _delete,
}
# Commands that change one user; each says whether anything changed.
_USER_DECISIONS: dict[type[Command], Callable[[User, Any], bool]] = {
    c.UpdateUserProfile: _profile,
    c.AssignRole: lambda user, command: user.assign_role(command.role),
    c.RevokeRole: lambda user, command: user.revoke_role(command.role),
    c.DisableUser: lambda user, command: user.disable(command.reason),
    c.ChangePassword: _password,
    c.VerifyEmail: lambda user, command: user.verify_email(),
    c.CreateApiKey: _create_key,
    c.RevokeApiKey: _revoke_key,
    c.EnableTwoFactor: lambda user, command: user.set_two_factor(enabled=True),
    c.DisableTwoFactor: lambda user, command: user.set_two_factor(enabled=False),
}
