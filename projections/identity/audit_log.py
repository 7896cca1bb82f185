"""The ``audit_log`` read model: every identity fact, with who did it, in store order.

Auth flows that ran at the ingress arrive as ``AuditEventRecorded``; changes decided by the
worker (roles, keys, 2FA, erasure, ...) are audit entries by themselves. The actor is the
authenticated principal the command carried (the event's metadata).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from events.identity import events as e

if TYPE_CHECKING:
    from psycopg import Cursor

    from events.base import Event
    from projections.base import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    position   bigint PRIMARY KEY,
    at         timestamptz NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL,
    outcome    text NOT NULL,
    subject    text NOT NULL,
    ip         text NOT NULL DEFAULT '',
    session_id text NOT NULL DEFAULT '',
    key_id     text NOT NULL DEFAULT '',
    detail     text NOT NULL DEFAULT '',
    command_id uuid
);
"""

INDEXES = """
CREATE INDEX IF NOT EXISTS audit_log_actor_idx ON audit_log (actor, position);
CREATE INDEX IF NOT EXISTS audit_log_action_idx ON audit_log (action, position);
CREATE INDEX IF NOT EXISTS audit_log_at_idx ON audit_log (at);
"""

# Domain events and the audit action each one is.
ACTIONS: dict[type[Event], str] = {
    e.UserRegistered: "user.registered",
    e.UserProfileUpdated: "user.profile_updated",
    e.EmailVerified: "user.email_verified",
    e.PasswordChanged: "user.password_changed",
    e.RoleAssigned: "role.assigned",
    e.RoleRevoked: "role.revoked",
    e.UserDisabled: "user.disabled",
    e.UserDeleted: "user.erased",
    e.ApiKeyCreated: "key.created",
    e.ApiKeyRevoked: "key.revoked",
    e.TwoFactorEnabled: "2fa.enabled",
    e.TwoFactorDisabled: "2fa.disabled",
}


class AuditLogProjection:
    name: ClassVar[str] = "identity.audit_log"
    context: ClassVar[str] = "identity"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("audit_log",)
    topics: ClassVar[frozenset[str]] = frozenset(
        {t.TYPE for t in ACTIONS} | {e.AuditEventRecorded.TYPE}
    )

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        cur.execute(SCHEMA)
        if indexes:
            self.create_indexes(cur)

    def create_indexes(self, cur: Cursor[Any]) -> None:
        cur.execute(INDEXES)

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        rows = []
        for env in batch:
            ev = env.event
            actor = str(env.meta.get("actor", "unknown"))
            command_id = env.meta.get("command_id")
            if isinstance(ev, e.AuditEventRecorded):
                rows.append(
                    (env.position, env.occurred_at, actor, ev.action, ev.outcome, ev.subject,
                     ev.ip, ev.session_id, ev.key_id, ev.detail, command_id)
                )  # fmt: skip
                continue
            action = ACTIONS.get(type(ev))
            if action is None:
                continue
            key_id = getattr(ev, "key_id", "")
            detail = getattr(ev, "role", "") or getattr(ev, "reason", "")
            if isinstance(ev, e.ApiKeyCreated):
                detail = " ".join(ev.scopes)
            rows.append(
                (env.position, env.occurred_at, actor, action, "ok", getattr(ev, "user_id", ""),
                 "", "", key_id, detail, command_id)
            )  # fmt: skip
        if rows:
            with cur.copy(
                "COPY audit_log (position, at, actor, action, outcome, subject, ip, session_id,"
                " key_id, detail, command_id) FROM STDIN"
            ) as copy:
                for row in rows:
                    copy.write_row(row)
