"""The ``api_keys`` read model: each key's facts, never its secret (that hash is a credential)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from events.identity.events import ApiKeyCreated, ApiKeyRevoked, UserDeleted

if TYPE_CHECKING:
    from psycopg import Cursor

    from projections.base import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id         text PRIMARY KEY,
    user_id        uuid NOT NULL,
    name           text NOT NULL,
    scopes         text[] NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz,
    revoked_at     timestamptz,
    replaces       text,
    replaced_by    text,
    replaced_until timestamptz,
    position       bigint NOT NULL
);
"""

INDEXES = "CREATE INDEX IF NOT EXISTS api_keys_user_idx ON api_keys (user_id, created_at);"


class ApiKeysProjection:
    name: ClassVar[str] = "identity.api_keys"
    context: ClassVar[str] = "identity"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("api_keys",)
    topics: ClassVar[frozenset[str]] = frozenset(
        {ApiKeyCreated.TYPE, ApiKeyRevoked.TYPE, UserDeleted.TYPE}
    )

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        cur.execute(SCHEMA)
        if indexes:
            self.create_indexes(cur)

    def create_indexes(self, cur: Cursor[Any]) -> None:
        cur.execute(INDEXES)

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        for env in batch:
            ev = env.event
            if isinstance(ev, ApiKeyCreated):
                cur.execute(
                    "INSERT INTO api_keys (key_id, user_id, name, scopes, created_at, expires_at,"
                    " replaces, position) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        ev.key_id,
                        ev.user_id,
                        ev.name,
                        ev.scopes,
                        env.occurred_at,
                        ev.expires_at,
                        ev.replaces,
                        env.position,
                    ),
                )
                if ev.replaces:
                    # The replaced key keeps working until the overlap ends, then expires.
                    cur.execute(
                        "UPDATE api_keys SET replaced_by = %s, replaced_until = %s,"
                        " expires_at = LEAST(COALESCE(expires_at, %s), %s), position = %s"
                        " WHERE key_id = %s",
                        (
                            ev.key_id,
                            ev.replaces_until,
                            ev.replaces_until,
                            ev.replaces_until,
                            env.position,
                            ev.replaces,
                        ),
                    )
            elif isinstance(ev, ApiKeyRevoked):
                cur.execute(
                    "UPDATE api_keys SET revoked_at = %s, position = %s WHERE key_id = %s",
                    (env.occurred_at, env.position, ev.key_id),
                )
            elif isinstance(ev, UserDeleted):
                cur.execute(
                    "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, %s), position = %s"
                    " WHERE user_id = %s",
                    (env.occurred_at, env.position, ev.user_id),
                )
