"""The ``users``, ``user_roles`` and ``roles`` read models of the identity context.

Personal data stays sealed here as in the events (the ingress unseals it with the user's data
key). Erasure destroys that key in the same transaction as the row change: the ``user_data_keys``
row is not a projection table, but deleting it is idempotent, so a replay or a rebuild does no
harm, and a rebuilt ``users`` table shows the user as erased whatever the events hold.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from events.identity.events import (
    EmailVerified,
    RoleAssigned,
    RoleRevoked,
    TwoFactorDisabled,
    TwoFactorEnabled,
    UserDeleted,
    UserDisabled,
    UserProfileUpdated,
    UserRegistered,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from psycopg import Cursor

    from projections.base import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id        uuid PRIMARY KEY,
    email_hmac     text NOT NULL,
    email_sealed   text,
    name_sealed    text,
    status         text NOT NULL CHECK (status IN ('active', 'disabled', 'erased')),
    email_verified boolean NOT NULL DEFAULT false,
    two_factor     boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    position       bigint NOT NULL
);
CREATE TABLE IF NOT EXISTS user_roles (
    user_id     uuid NOT NULL,
    role        text NOT NULL,
    assigned_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, role)
);
CREATE TABLE IF NOT EXISTS roles (
    role        text PRIMARY KEY,
    permissions text[] NOT NULL
);
"""

INDEXES = """
CREATE INDEX IF NOT EXISTS users_email_hmac_idx ON users (email_hmac) WHERE status <> 'erased';
CREATE INDEX IF NOT EXISTS users_created_idx ON users (created_at, user_id);
"""


class UsersProjection:
    name: ClassVar[str] = "identity.users"
    context: ClassVar[str] = "identity"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("users", "user_roles", "roles")
    topics: ClassVar[frozenset[str]] = frozenset(
        t.TYPE
        for t in (
            UserRegistered,
            UserProfileUpdated,
            EmailVerified,
            RoleAssigned,
            RoleRevoked,
            UserDisabled,
            UserDeleted,
            TwoFactorEnabled,
            TwoFactorDisabled,
        )
    )

    def __init__(self, role_permissions: Mapping[str, frozenset[str]]) -> None:
        self.role_permissions = role_permissions
        """The access policy's role -> permissions map (``events.access``)."""

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        cur.execute(SCHEMA)
        # The roles table is the code's role -> permission map, kept for SQL readers and admins.
        cur.execute("DELETE FROM roles")
        cur.executemany(
            "INSERT INTO roles (role, permissions) VALUES (%s, %s)",
            [(role, sorted(perms)) for role, perms in sorted(self.role_permissions.items())],
        )
        if indexes:
            self.create_indexes(cur)

    def create_indexes(self, cur: Cursor[Any]) -> None:
        cur.execute(INDEXES)

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        for env in batch:
            ev = env.event
            at, pos = env.occurred_at, env.position
            if isinstance(ev, UserRegistered):
                cur.execute(
                    "INSERT INTO users (user_id, email_hmac, email_sealed, name_sealed, status,"
                    " created_at, updated_at, position) VALUES (%s, %s, %s, %s, 'active', %s, %s,"
                    " %s)",
                    (ev.user_id, ev.email_hmac, ev.email_sealed, ev.name_sealed, at, at, pos),
                )
                cur.executemany(
                    "INSERT INTO user_roles (user_id, role, assigned_at) VALUES (%s, %s, %s)",
                    [(ev.user_id, role, at) for role in ev.roles],
                )
            elif isinstance(ev, RoleAssigned):
                cur.execute(
                    "INSERT INTO user_roles (user_id, role, assigned_at) VALUES (%s, %s, %s)"
                    " ON CONFLICT DO NOTHING",
                    (ev.user_id, ev.role, at),
                )
                self._touch(cur, ev.user_id, at, pos)
            elif isinstance(ev, RoleRevoked):
                cur.execute(
                    "DELETE FROM user_roles WHERE user_id = %s AND role = %s", (ev.user_id, ev.role)
                )
                self._touch(cur, ev.user_id, at, pos)
            elif isinstance(ev, UserProfileUpdated):
                self._touch(cur, ev.user_id, at, pos, "name_sealed = %s", ev.name_sealed)
            elif isinstance(ev, EmailVerified):
                self._touch(cur, ev.user_id, at, pos, "email_verified = %s", True)
            elif isinstance(ev, TwoFactorEnabled | TwoFactorDisabled):
                enabled = isinstance(ev, TwoFactorEnabled)
                self._touch(cur, ev.user_id, at, pos, "two_factor = %s", enabled)
            elif isinstance(ev, UserDisabled):
                self._touch(cur, ev.user_id, at, pos, "status = %s", "disabled")
            elif isinstance(ev, UserDeleted):
                cur.execute(
                    "UPDATE users SET status = 'erased', email_sealed = NULL, name_sealed = NULL,"
                    " two_factor = false, updated_at = %s, position = %s WHERE user_id = %s",
                    (at, pos, ev.user_id),
                )
                cur.execute("DELETE FROM user_roles WHERE user_id = %s", (ev.user_id,))
                cur.execute("DELETE FROM user_data_keys WHERE user_id = %s", (ev.user_id,))

    @staticmethod
    def _touch(
        cur: Cursor[Any], user_id: str, at: Any, pos: int, change: str = "", value: Any = None
    ) -> None:
        sets = f"{change}, " if change else ""
        params = (value, at, pos, user_id) if change else (at, pos, user_id)
        cur.execute(
            f"UPDATE users SET {sets}updated_at = %s, position = %s WHERE user_id = %s",
            params,
        )
