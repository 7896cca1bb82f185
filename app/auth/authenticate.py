"""Authentication of a request: a bearer access token or an API key (in ``X-API-Key``, or as the
bearer, as OpenAI's clients send it), checked against revocation.

Access tokens are verified locally (signature, claims; verified tokens are cached until they
expire) and then checked against the Redis deny-list of revoked sessions, which every replica
shares, so a revoked session stops working everywhere at once. API keys are looked up in
PostgreSQL (cached briefly per process) and checked against the deny-list of revoked keys on
every request. With Redis unreachable, revocation is checked in PostgreSQL instead (the
sessions table, the api_keys read model): slower, never skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import PoolTimeout
from redis.exceptions import RedisError

from app.auth.principal import Principal, unauthorized
from app.problems import ProblemError
from events.access import ADMIN
from infra.coalesce import Coalescer
from security.apikeys import parse_api_key, verify_api_key_secret
from security.tokens import TokenError
from telemetry.metrics import AUTH_DECISIONS, Children

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool
    from redis.asyncio import Redis
    from starlette.requests import HTTPConnection

    from app.auth.audit import Auditor
    from events.access import AccessPolicy
    from security.tokens import Tokens

log = logging.getLogger("uait.auth")
AUTH_DECISIONS_OF = Children(AUTH_DECISIONS)

SESSION_DENY = "deny:sid:"
KEY_DENY = "deny:key:"
KEY_USED = "used:key:"
NOTE_USE_EVERY_S = 60


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    user_id: str
    secret_hash: bytes
    scopes: tuple[str, ...]
    expires_at: datetime | None
    revoked: bool
    owner_active: bool
    owner_roles: tuple[str, ...]


class Authenticator:
    def __init__(
        self,
        tokens: Tokens,
        pool: AsyncConnectionPool[Any],
        redis: Redis | None,
        auditor: Auditor,
        access: AccessPolicy,
        *,
        key_cache_s: float,
    ) -> None:
        self.tokens = tokens
        self.access = access
        self.pool = pool
        self.redis = redis
        self.auditor = auditor
        self.key_cache_s = key_cache_s
        self._keys: dict[str, tuple[float, KeyRecord | None]] = {}
        self._noted: dict[str, float] = {}  # key id -> when this process last noted its use
        # The concurrent requests' deny-list lookups, as one MGET.
        self._deny_lookups: Coalescer[str, bool] = Coalescer(self._on_deny_list)

    async def authenticate(self, request: HTTPConnection) -> Principal:
        cached = getattr(request.state, "principal", None)
        if isinstance(cached, Principal):
            return cached
        header = request.headers.get("authorization")
        api_key = request.headers.get("x-api-key")
        if header and api_key:
            raise unauthorized("send either a bearer token or an API key, not both")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthorized("the Authorization header must be `Bearer <access token>`")
            token = token.strip()
            # An API key as the bearer, as OpenAI's clients send theirs: never a JWT's shape.
            if parse_api_key(token) is not None:
                principal = await self._api_key(token, request)
            else:
                principal = await self._bearer(token)
        elif api_key:
            principal = await self._api_key(api_key.strip(), request)
        else:
            AUTH_DECISIONS_OF("none", "refused").inc()
            raise unauthorized("authentication required: a bearer token or an X-API-Key")
        request.state.principal = principal
        return principal

    async def _bearer(self, token: str) -> Principal:
        try:
            claims = self.tokens.verify_access(token)
        except TokenError as exc:
            log.info("access token refused: %s", exc.reason)
            AUTH_DECISIONS_OF("bearer", "refused").inc()
            raise unauthorized("invalid token") from None
        if not claims.session_id or await self._denied(
            SESSION_DENY + claims.session_id,
            "SELECT revoked_at IS NOT NULL FROM auth_sessions WHERE session_id = %s::uuid",
            claims.session_id,
        ):
            AUTH_DECISIONS_OF("bearer", "revoked").inc()
            raise unauthorized("the session was revoked")
        AUTH_DECISIONS_OF("bearer", "ok").inc()
        return Principal(
            user_id=claims.subject,
            kind="user",
            permissions=self.access.permissions_of(claims.roles),
            roles=claims.roles,
            session_id=claims.session_id,
            amr=claims.amr,
        )

    async def _api_key(self, value: str, request: HTTPConnection) -> Principal:
        parsed = parse_api_key(value)
        if parsed is None:
            AUTH_DECISIONS_OF("api_key", "refused").inc()
            raise unauthorized("invalid API key")
        key_id, secret = parsed
        record = await self._key(key_id)
        now = datetime.now(UTC)
        if (
            record is None
            or not verify_api_key_secret(secret, record.secret_hash)
            or record.revoked
            or not record.owner_active
            or (record.expires_at is not None and record.expires_at <= now)
        ):
            AUTH_DECISIONS_OF("api_key", "refused").inc()
            raise unauthorized("invalid, expired or revoked API key")
        if await self._denied(
            KEY_DENY + key_id,
            "SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_id = %s",
            key_id,
        ):
            AUTH_DECISIONS_OF("api_key", "revoked").inc()
            raise unauthorized("invalid, expired or revoked API key")
        owner = self.access.permissions_of(record.owner_roles)
        scopes = self.access.permissions if ADMIN in record.scopes else frozenset(record.scopes)
        AUTH_DECISIONS_OF("api_key", "ok").inc()
        await self._note_use(record, request)
        return Principal(
            user_id=record.user_id,
            kind="key",
            permissions=owner & scopes,
            roles=record.owner_roles,
            key_id=key_id,
        )

    async def _denied(self, key: str, fallback_sql: LiteralString, value: str) -> bool:
        """On the shared deny-list; without Redis, revoked according to PostgreSQL."""
        if self.redis is not None:
            try:
                return await self._deny_lookups(key)
            except (RedisError, OSError) as exc:
                log.warning("deny-list unavailable, checking PostgreSQL: %s", exc)
        try:
            async with self.pool.connection() as conn:
                cur = await conn.execute(fallback_sql, (value,))
                row = await cur.fetchone()
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("cannot check revocations: %s", exc)
            raise ProblemError(
                503,
                "Authentication unavailable",
                "revocations cannot be checked right now; retry shortly",
                headers={"Retry-After": "1"},
            ) from None
        return row is None or bool(row[0])

    async def _on_deny_list(self, keys: list[str]) -> list[bool]:
        assert self.redis is not None
        return [value is not None for value in await self.redis.mget(keys)]

    async def _key(self, key_id: str) -> KeyRecord | None:
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit is not None and now - hit[0] < self.key_cache_s:
            return hit[1]
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                """
                SELECT s.key_id, s.user_id, s.secret_hash, k.scopes, k.expires_at,
                       k.revoked_at IS NOT NULL AS revoked,
                       COALESCE(u.status = 'active', false) AS owner_active,
                       COALESCE(ARRAY(SELECT role FROM user_roles r
                                      WHERE r.user_id = s.user_id), '{}') AS owner_roles
                FROM api_key_secrets s
                JOIN api_keys k USING (key_id)
                LEFT JOIN users u ON u.user_id = s.user_id
                WHERE s.key_id = %s
                """,
                (key_id,),
            )
            row = await cur.fetchone()
        record = (
            None
            if row is None
            else KeyRecord(
                key_id=row["key_id"],
                user_id=str(row["user_id"]),
                secret_hash=bytes(row["secret_hash"]),
                scopes=tuple(row["scopes"]),
                expires_at=row["expires_at"],
                revoked=row["revoked"],
                owner_active=row["owner_active"],
                owner_roles=tuple(row["owner_roles"]),
            )
        )
        if len(self._keys) > 10_000:
            self._keys.clear()
        self._keys[key_id] = (now, record)
        return record

    def forget_key(self, key_id: str) -> None:
        self._keys.pop(key_id, None)

    async def _note_use(self, record: KeyRecord, request: HTTPConnection) -> None:
        """``last_used_at`` and a ``key.used`` audit entry, at most once a minute per key."""
        if self.redis is None:
            return
        now = time.monotonic()
        if now - self._noted.get(record.key_id, -NOTE_USE_EVERY_S) < NOTE_USE_EVERY_S:
            return  # this process noted it within the minute: no round trip to Redis
        if len(self._noted) > 10_000:
            self._noted.clear()
        self._noted[record.key_id] = now
        try:
            # Once a minute across replicas.
            first = await self.redis.set(
                KEY_USED + record.key_id, "1", nx=True, ex=NOTE_USE_EVERY_S
            )
        except (RedisError, OSError):
            return
        if not first:
            return
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE api_key_secrets SET last_used_at = now() WHERE key_id = %s",
                (record.key_id,),
            )
        await self.auditor.record(
            "key.used", subject=record.user_id, actor=f"user:{record.user_id}", request=request,
            key_id=record.key_id,
        )  # fmt: skip
