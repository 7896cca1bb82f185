"""Login throttling on the one rate limiter (GCRA in Redis), without lockout abuse.

Two rules. Per account and IP, the ``login`` policy (5 attempts per 15 minutes by default):
guessing from one address slows to the policy's rate, and each refusal says when to retry.
Per account, failures from anywhere are counted for an hour; past ``login_account_failures``,
attempts from addresses that never logged into the account successfully are refused for a
growing delay, while the owner's known addresses keep working: an attacker elsewhere can slow
their own guesses, never lock the owner out. Redis down: login fails closed (the policy's
``fail_open`` is false by default), since unthrottled guessing is what this exists to stop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from app.problems import ProblemError
from app.ratelimit import Limit, response_headers
from telemetry.metrics import LOGIN_THROTTLED

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.ratelimit import RateLimiter
    from infra.settings import Settings

log = logging.getLogger("uait.auth")

FAILURES = "lf:acct:"
KNOWN = "known:ip:"
KNOWN_FOR_S = 90 * 86_400


class LoginThrottle:
    def __init__(self, limiter: RateLimiter | None, redis: Redis | None, settings: Settings):
        self.limiter = limiter
        self.redis = redis
        self.settings = settings
        self.policy = settings.platform_rate_limit("login")

    def _unavailable(self) -> ProblemError:
        return ProblemError(
            503,
            "Login unavailable",
            "login throttling cannot be checked right now; retry shortly",
            headers={"Retry-After": "2"},
        )

    async def check(self, account: str, ip: str) -> None:
        """Refuse with 429 (and Retry-After) when this attempt is over a limit."""
        if self.limiter is None or self.redis is None:
            if not self.policy.fail_open:
                raise self._unavailable()
            return
        try:
            decision = await self.limiter.check(
                [Limit("login", self.policy, "account_ip", f"{account}:{ip}")]
            )
            failures, known = await self._account_state(account, ip)
        except (RedisError, OSError) as exc:
            log.warning("login throttle unavailable: %s", exc)
            if not self.policy.fail_open:
                raise self._unavailable() from None
            return
        if not decision.allowed:
            LOGIN_THROTTLED.labels("account_ip").inc()
            raise ProblemError(
                429,
                "Too many login attempts",
                "too many attempts for this account from this address; retry later",
                headers=response_headers(decision),
            )
        over = failures - self.settings.login_account_failures
        if over >= 0 and not known:
            LOGIN_THROTTLED.labels("account").inc()
            delay = min(2 ** min(over, 10), 900)
            raise ProblemError(
                429,
                "Too many login attempts",
                "this account is seeing many failed logins; retry later",
                headers={"Retry-After": str(delay)},
            )

    async def _account_state(self, account: str, ip: str) -> tuple[int, bool]:
        assert self.redis is not None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(FAILURES + account)
            pipe.sismember(KNOWN + account, ip)
            failures, known = await pipe.execute()
        return int(failures or 0), bool(known)

    async def failed(self, account: str) -> None:
        if self.redis is None:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                # The hour starts at the first failure (SET NX EX, then INCR: Redis 6.2 has no
                # EXPIRE NX).
                pipe.set(FAILURES + account, 0, ex=3600, nx=True)
                pipe.incr(FAILURES + account)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not count a failed login: %s", exc)

    async def succeeded(self, account: str, ip: str) -> None:
        if self.redis is None:
            return
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.sadd(KNOWN + account, ip)
                pipe.expire(KNOWN + account, KNOWN_FOR_S)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("could not remember a login address: %s", exc)
