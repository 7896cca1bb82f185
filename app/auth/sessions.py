"""Sessions and refresh tokens in PostgreSQL: rotation by compare-and-set, reuse detection.

A session is one login; its refresh tokens form a family. Every refresh marks the token used and
issues its successor in one transaction that locks the session row, so concurrent refreshes of one
family are serialised. A used token presented again within the grace window (two tabs refreshing
at once) gets a successor too; later, it is a replay: the whole family (the session) is revoked.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from psycopg.rows import dict_row

from events.ids import uuid7
from security.refresh import hash_token, new_refresh_token

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool


@dataclass(frozen=True)
class Rotation:
    status: Literal["ok", "invalid", "expired", "revoked", "reused"]
    session_id: str = ""
    user_id: str = ""
    refresh_token: str = ""
    amr: tuple[str, ...] = ()


@dataclass(frozen=True)
class SessionPolicy:
    absolute_s: int
    idle_s: int
    grace_s: float


class Sessions:
    def __init__(self, pool: AsyncConnectionPool[Any], policy: SessionPolicy) -> None:
        self.pool = pool
        self.policy = policy

    async def start(
        self, user_id: str, *, amr: list[str], ip: str, user_agent: str
    ) -> tuple[str, str]:
        """A new session and its first refresh token: (session id, refresh token)."""
        now = datetime.now(UTC)
        session_id = str(uuid7())
        token = new_refresh_token()
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO auth_sessions (session_id, user_id, created_at, last_used_at,"
                " expires_at, ip, user_agent, amr) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    session_id,
                    user_id,
                    now,
                    now,
                    now + timedelta(seconds=self.policy.absolute_s),
                    ip[:64],
                    user_agent[:300],
                    amr,
                ),
            )
            await self._issue(conn, session_id, token, now)
        return session_id, token

    async def _issue(
        self, conn: AsyncConnection[Any], session_id: str, token: str, now: datetime
    ) -> None:
        await conn.execute(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, idle_expires_at)"
            " VALUES (%s, %s, %s, %s)",
            (hash_token(token), session_id, now, now + timedelta(seconds=self.policy.idle_s)),
        )

    async def rotate(self, token: str) -> Rotation:
        now = datetime.now(UTC)
        async with (
            self.pool.connection() as conn,
            conn.transaction(),
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                """
                SELECT r.used_at, r.idle_expires_at, s.session_id, s.user_id, s.expires_at,
                       s.revoked_at, s.amr
                FROM refresh_tokens r JOIN auth_sessions s USING (session_id)
                WHERE r.token_hash = %s
                FOR UPDATE OF s
                """,
                (hash_token(token),),
            )
            row = await cur.fetchone()
            if row is None:
                return Rotation("invalid")
            sid, uid = str(row["session_id"]), str(row["user_id"])
            if row["revoked_at"] is not None:
                return Rotation("revoked", sid, uid)
            if row["expires_at"] <= now or row["idle_expires_at"] <= now:
                return Rotation("expired", sid, uid)
            used = row["used_at"]
            if used is not None and (now - used).total_seconds() > self.policy.grace_s:
                await cur.execute(
                    "UPDATE auth_sessions SET revoked_at = %s, revoked_reason = 'reuse'"
                    " WHERE session_id = %s",
                    (now, sid),
                )
                return Rotation("reused", sid, uid)
            if used is None:
                await cur.execute(
                    "UPDATE refresh_tokens SET used_at = %s WHERE token_hash = %s",
                    (now, hash_token(token)),
                )
            successor = new_refresh_token()
            await self._issue(conn, sid, successor, now)
            await cur.execute(
                "UPDATE auth_sessions SET last_used_at = %s WHERE session_id = %s", (now, sid)
            )
            return Rotation("ok", sid, uid, successor, tuple(row["amr"]))

    async def revoke(self, user_id: str, session_id: str | None, reason: str) -> list[str]:
        """Revoke one session of ``user_id`` (or all with None); returns the ids revoked."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE auth_sessions SET revoked_at = now(), revoked_reason = %s"
                " WHERE user_id = %s AND revoked_at IS NULL AND expires_at > now()"
                " AND (%s::uuid IS NULL OR session_id = %s::uuid) RETURNING session_id",
                (reason, user_id, session_id, session_id),
            )
            return [str(r[0]) for r in await cur.fetchall()]

    async def list(self, user_id: str) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT session_id, created_at, last_used_at, expires_at, ip, user_agent, amr"
                " FROM auth_sessions WHERE user_id = %s AND revoked_at IS NULL"
                " AND expires_at > now() ORDER BY created_at DESC LIMIT 100",
                (user_id,),
            )
            return list(await cur.fetchall())

    @staticmethod
    def valid_id(value: str) -> bool:
        try:
            uuid.UUID(value)
        except ValueError:
            return False
        return True
