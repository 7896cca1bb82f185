"""The identity aggregates: a user, the reservation of an email, and one audit record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.identity.events import (
    ApiKeyCreated,
    ApiKeyRevoked,
    AuditEventRecorded,
    EmailReleased,
    EmailReserved,
    EmailVerified,
    PasswordChanged,
    RoleAssigned,
    RoleRevoked,
    TwoFactorDisabled,
    TwoFactorEnabled,
    UserDeleted,
    UserDisabled,
    UserProfileUpdated,
    UserRegistered,
)
from events.identity.roles import ROLES
from workers.aggregate import Aggregate, DomainRuleError

if TYPE_CHECKING:
    import uuid

    from events.base import Event
    from events.identity import commands as c


class UserNotFoundError(DomainRuleError):
    """Raised when a command addresses a user that does not exist or was erased."""

    code = "not_found"


class UserDisabledError(DomainRuleError):
    """Raised when a command would change a disabled user (only erasure is allowed)."""


class EmailTakenError(DomainRuleError):
    """Raised when registering an email that another user holds."""


class UnknownRoleError(DomainRuleError):
    """Raised when assigning a role the platform does not define."""

    code = "invalid"


class ApiKeyNotFoundError(DomainRuleError):
    """Raised when revoking or replacing a key the user does not have (or already revoked)."""

    code = "not_found"


class EmailReservation(Aggregate):
    owner: str | None = None

    def apply(self, event: Event) -> None:
        if isinstance(event, EmailReserved):
            self.owner = event.user_id
        elif isinstance(event, EmailReleased):
            self.owner = None

    def reserve(self, email_hmac: str, user_id: str) -> None:
        if self.owner is not None:
            raise EmailTakenError("the email is already registered")
        self.record(EmailReserved(email_hmac=email_hmac, user_id=user_id))

    def release(self, email_hmac: str, user_id: str) -> None:
        if self.owner == user_id:
            self.record(EmailReleased(email_hmac=email_hmac, user_id=user_id))


class User(Aggregate):
    exists = False
    deleted = False
    disabled = False
    email_hmac = ""

    def __init__(self, aggregate_id: uuid.UUID) -> None:
        super().__init__(aggregate_id)
        self.roles: set[str] = set()
        self.keys: dict[str, bool] = {}  # key id -> active
        self.two_factor = False
        self.email_verified = False

    def apply(self, event: Event) -> None:
        if isinstance(event, UserRegistered):
            self.exists = True
            self.email_hmac = event.email_hmac
            self.roles = set(event.roles)
        elif isinstance(event, RoleAssigned):
            self.roles.add(event.role)
        elif isinstance(event, RoleRevoked):
            self.roles.discard(event.role)
        elif isinstance(event, UserDisabled):
            self.disabled = True
        elif isinstance(event, UserDeleted):
            self.deleted = True
            self.roles = set()
            self.keys = dict.fromkeys(self.keys, False)
        elif isinstance(event, ApiKeyCreated):
            self.keys[event.key_id] = True
        elif isinstance(event, ApiKeyRevoked):
            self.keys[event.key_id] = False
        elif isinstance(event, TwoFactorEnabled):
            self.two_factor = True
        elif isinstance(event, TwoFactorDisabled):
            self.two_factor = False
        elif isinstance(event, EmailVerified):
            self.email_verified = True
        elif isinstance(event, UserProfileUpdated | PasswordChanged):
            pass

    @property
    def user_id(self) -> str:
        return str(self.id)

    def _check_live(self) -> None:
        if not self.exists or self.deleted:
            raise UserNotFoundError(f"user {self.id} does not exist")

    def _check_active(self) -> None:
        self._check_live()
        if self.disabled:
            raise UserDisabledError(f"user {self.id} is disabled")

    def register(self, cmd: c.RegisterUser) -> None:
        if self.exists:
            raise EmailTakenError(f"user {self.id} already exists")
        unknown = set(cmd.roles) - ROLES
        if unknown:
            raise UnknownRoleError(f"unknown roles: {sorted(unknown)}")
        self.record(
            UserRegistered(
                user_id=self.user_id,
                email_hmac=cmd.email_hmac,
                email_sealed=cmd.email_sealed,
                name_sealed=cmd.name_sealed,
                roles=sorted(set(cmd.roles)),
            )
        )

    def update_profile(self, cmd: c.UpdateUserProfile) -> None:
        self._check_active()
        self.record(UserProfileUpdated(user_id=self.user_id, name_sealed=cmd.name_sealed))

    def assign_role(self, role: str) -> bool:
        self._check_live()
        if role not in ROLES:
            raise UnknownRoleError(f"unknown role {role!r}")
        if role in self.roles:
            return False
        self.record(RoleAssigned(user_id=self.user_id, role=role))
        return True

    def revoke_role(self, role: str) -> bool:
        self._check_live()
        if role not in self.roles:
            return False
        self.record(RoleRevoked(user_id=self.user_id, role=role))
        return True

    def disable(self, reason: str) -> bool:
        self._check_live()
        if self.disabled:
            return False
        self.record(UserDisabled(user_id=self.user_id, reason=reason))
        return True

    def delete(self) -> None:
        self._check_live()
        self.record(UserDeleted(user_id=self.user_id))

    def change_password(self, reason: str) -> None:
        self._check_active()
        self.record(PasswordChanged(user_id=self.user_id, reason=reason))

    def verify_email(self) -> bool:
        self._check_active()
        if self.email_verified:
            return False
        self.record(EmailVerified(user_id=self.user_id))
        return True

    def create_api_key(self, cmd: c.CreateApiKey) -> None:
        self._check_active()
        if cmd.key_id in self.keys:
            raise DomainRuleError(f"key {cmd.key_id} already exists")
        if cmd.replaces is not None and not self.keys.get(cmd.replaces):
            raise ApiKeyNotFoundError(f"key {cmd.replaces} is not an active key of this user")
        self.record(
            ApiKeyCreated(
                user_id=self.user_id,
                key_id=cmd.key_id,
                name=cmd.name,
                scopes=sorted(set(cmd.scopes)),
                expires_at=cmd.expires_at,
                replaces=cmd.replaces,
                replaces_until=cmd.replaces_until,
            )
        )

    def revoke_api_key(self, key_id: str) -> None:
        self._check_live()
        if not self.keys.get(key_id):
            raise ApiKeyNotFoundError(f"key {key_id} is not an active key of this user")
        self.record(ApiKeyRevoked(user_id=self.user_id, key_id=key_id))

    def set_two_factor(self, *, enabled: bool) -> bool:
        self._check_active()
        if self.two_factor == enabled:
            return False
        event = TwoFactorEnabled if enabled else TwoFactorDisabled
        self.record(event(user_id=self.user_id))
        return True


class AuditRecord(Aggregate):
    """One audit fact per stream, so concurrent auth flows never conflict."""

    def apply(self, event: Event) -> None:
        return None

    def write(self, cmd: c.RecordAuditEvent) -> None:
        if self.version:
            raise DomainRuleError(f"audit record {self.id} already written")
        self.record(
            AuditEventRecorded(
                action=cmd.action,
                outcome=cmd.outcome,
                subject=cmd.user_id,
                ip=cmd.ip,
                session_id=cmd.session_id,
                key_id=cmd.key_id,
                detail=cmd.detail,
            )
        )
