"""Everything the auth routes need, built once at start-up (``app.state.auth``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from fastapi import Request  # noqa: TC002  (FastAPI resolves this annotation at runtime)
from redis.exceptions import RedisError

from app.auth.audit import Auditor
from app.auth.authenticate import SESSION_DENY, Authenticator
from app.auth.notifier import Notifier, OutboxNotifier, SmtpNotifier
from app.auth.sessions import SessionPolicy, Sessions
from app.auth.throttle import LoginThrottle
from infra.identity import IdentityCore
from security.jose import TokenConfig
from security.signing import KeyCache
from security.tokens import Tokens

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool
    from redis.asyncio import Redis

    from app.ratelimit import RateLimiter
    from events.access import AccessPolicy
    from infra.publisher import CommandPublisher
    from infra.settings import Settings

log = logging.getLogger("uait.auth")


@dataclass
class AuthRuntime:
    settings: Settings
    access: AccessPolicy
    core: IdentityCore
    keys: KeyCache
    tokens: Tokens
    sessions: Sessions
    throttle: LoginThrottle
    auditor: Auditor
    authenticator: Authenticator
    notifier: Notifier
    redis: Redis | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def deny_sessions(self, session_ids: list[str]) -> None:
        """Every replica refuses these sessions' access tokens for as long as they can live."""
        if not session_ids or self.redis is None:
            return
        ttl = self.settings.access_token_ttl_s + 60
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sid in session_ids:
                    pipe.set(SESSION_DENY + sid, "1", ex=ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # The sessions are revoked in PostgreSQL (no refresh); access tokens live on.
            log.error("could not deny-list sessions %s: %s", session_ids, exc)

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def build_auth(
    settings: Settings,
    pool: AsyncConnectionPool[Any],
    redis: Redis | None,
    publisher: CommandPublisher,
    limiter: RateLimiter | None,
    access: AccessPolicy,
) -> AuthRuntime:
    core = IdentityCore.from_settings(settings, pool)
    config = TokenConfig(
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        access_ttl_s=settings.access_token_ttl_s,
    )
    keys = KeyCache(
        core.keyring,
        max_token_ttl_s=config.max_token_ttl_s,
        refresh_period_s=settings.signing_key_refresh_s,
    )
    await keys.refresh(pool)
    tokens = Tokens(keys.get, config, on_unknown_kid=keys.note_unknown_kid)
    auditor = Auditor(publisher, settings)
    notifier: Notifier = (
        SmtpNotifier(settings.smtp_url, settings.smtp_from)
        if settings.notifier == "smtp"
        else OutboxNotifier(settings.data_dir / "outbox")
    )
    runtime = AuthRuntime(
        settings=settings,
        access=access,
        core=core,
        keys=keys,
        tokens=tokens,
        sessions=Sessions(
            pool,
            SessionPolicy(
                absolute_s=settings.refresh_token_ttl_s,
                idle_s=settings.refresh_token_idle_s,
                grace_s=settings.refresh_reuse_grace_s,
            ),
        ),
        throttle=LoginThrottle(limiter, redis, settings),
        auditor=auditor,
        authenticator=Authenticator(
            tokens, pool, redis, auditor, access, key_cache_s=settings.api_key_cache_s
        ),
        notifier=notifier,
        redis=redis,
    )
    runtime.tasks.append(asyncio.create_task(keys.run(pool), name="signing-keys"))
    return runtime


async def auth(request: Request) -> AuthRuntime:
    # async: FastAPI would run a plain function in its thread pool, on every request.
    return cast("AuthRuntime", request.app.state.auth)
