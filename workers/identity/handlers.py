"""Decisions of the identity context."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from events.identity import commands as c
from events.ids import email_reservation_id
from workers.decisions import Verdict
from workers.identity.user import AuditRecord, EmailReservation, User, UserNotFoundError

if TYPE_CHECKING:
    from events.base import Command
    from workers.decisions import Streams


@dataclass(frozen=True)
class IdentityDecider:
    context: str = "identity"

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        assert isinstance(command, c.IdentityCommand)
        if isinstance(command, c.RecordAuditEvent):
            return [uuid.UUID(command.record_id)]
        ids = [uuid.UUID(command.user_id)]
        if isinstance(command, c.RegisterUser | c.DeleteUser):
            ids.append(email_reservation_id(command.email_hmac))
        return ids

    def decide(self, command: Command, streams: Streams) -> Verdict:
        assert isinstance(command, c.IdentityCommand)
        if isinstance(command, c.RecordAuditEvent):
            record = streams.get(uuid.UUID(command.record_id), AuditRecord)
            record.write(command)
            return Verdict(record.id, command.action)
        user = streams.get(uuid.UUID(command.user_id), User)
        if isinstance(command, c.RegisterUser):
            reservation = streams.get(email_reservation_id(command.email_hmac), EmailReservation)
            reservation.reserve(command.email_hmac, user.user_id)
            user.register(command)
            return Verdict(user.id, "registered")
        if isinstance(command, c.DeleteUser):
            if user.exists and user.email_hmac != command.email_hmac:
                raise UserNotFoundError("the email hash does not match the user")
            user.delete()
            reservation = streams.get(email_reservation_id(command.email_hmac), EmailReservation)
            reservation.release(command.email_hmac, user.user_id)
            return Verdict(user.id, "erased")
        changed = True
        if isinstance(command, c.UpdateUserProfile):
            user.update_profile(command)
        elif isinstance(command, c.AssignRole):
            changed = user.assign_role(command.role)
        elif isinstance(command, c.RevokeRole):
            changed = user.revoke_role(command.role)
        elif isinstance(command, c.DisableUser):
            changed = user.disable(command.reason)
        elif isinstance(command, c.ChangePassword):
            user.change_password(command.reason)
        elif isinstance(command, c.VerifyEmail):
            changed = user.verify_email()
        elif isinstance(command, c.CreateApiKey):
            user.create_api_key(command)
        elif isinstance(command, c.RevokeApiKey):
            user.revoke_api_key(command.key_id)
        elif isinstance(command, c.EnableTwoFactor | c.DisableTwoFactor):
            changed = user.set_two_factor(enabled=isinstance(command, c.EnableTwoFactor))
        else:
            raise TypeError(f"no decision for {type(command).__name__}")
        return Verdict(user.id, "changed" if changed else "unchanged")
