"""Rate limits shared by every ingress replica: GCRA in Redis, decided atomically in Lua.

A request is matched to a stack of limits (e.g. a knowledge write counts against ``knowledge``
and ``default``). The script checks every limit of the stack and counts the request in all of
them only when all allow it, so a request refused by one limit consumes nothing of the others.
Concurrent requests share one script call, which decides them one after the other.
Keys are ``rl:{policy}:{scope}:{id}``; the scope is ``key`` (an API key), ``user`` (a bearer
token) or ``ip`` (no valid credentials); login throttling uses ``account_ip`` (app.auth.throttle).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from app.asgi import send_problem
from app.clientip import client_ip, in_networks
from app.edge import principal_of
from infra.coalesce import Coalescer
from telemetry.metrics import RATELIMIT_CHECK_DURATION, RATELIMIT_DECISIONS, Children

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from redis.asyncio import Redis
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from app.deps import RouteGroup
    from infra.policies import RateLimitPolicy
    from infra.settings import Settings

log = logging.getLogger("uait.ingress")
RATELIMIT_DECISIONS_OF = Children(RATELIMIT_DECISIONS)

# GCRA per key: TAT (theoretical arrival time, microseconds of the Redis clock) in a string key.
# Emission interval T = period / limit; a request of cost c fits when new_tat - now <= period,
# with new_tat = max(tat, now) + T * c. One call decides a batch of requests, in order, each as
# before: decide every key of its stack, then write all or none. ARGV: the number of requests,
# then per request the number of its keys and (period, limit, cost) per key; KEYS: every
# request's keys in order. Returns per request {allowed, then per key: remaining units, us until
# the bucket is full, us to wait}.
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local k = 0
local a = 2
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  local allowed = 1
  local tats = {}
  for i = 1, n do
    local period = tonumber(ARGV[a + 3 * i - 2])
    local limit = tonumber(ARGV[a + 3 * i - 1])
    local cost = tonumber(ARGV[a + 3 * i])
    local stored = redis.call('GET', KEYS[k + i])
    local tat = now
    if stored then tat = math.max(tonumber(stored), now) end
    local new_tat = tat + (period / limit) * cost
    if new_tat - now > period + 0.5 then allowed = 0 end
    tats[i] = {tat, new_tat, period, limit, cost}
  end
  out[#out + 1] = allowed
  for i = 1, n do
    local tat, new_tat, period, limit, cost = unpack(tats[i])
    local interval = period / limit
    local wait = 0
    if allowed == 1 then
      tat = new_tat
      redis.call('SET', KEYS[k + i], string.format('%.0f', tat),
                 'PX', math.max(1, math.ceil((tat - now) / 1000)))
    else
      wait = math.max(0, new_tat - period - now)
    end
    local remaining = math.floor((period - (tat - now)) / interval + 1e-6)
    out[#out + 1] = math.max(0, remaining)
    out[#out + 1] = math.ceil(tat - now)
    out[#out + 1] = math.ceil(wait)
  end
  k = k + n
  a = a + 1 + 3 * n
end
return out
"""

ALLOWED = "allowed"
LIMITED = "limited"
FAILED_OPEN = "failed_open"
FAILED_CLOSED = "failed_closed"

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# The platform's rows, after the contexts' own (first match wins; every /v1 path matches the
# last row). Logins are throttled per account and IP by app.auth.throttle, on the same limiter.
# The orchestration rows cover the agent routes as they land.
PLATFORM_ROUTE_GROUPS: tuple[RouteGroup, ...] = (
    (WRITE_METHODS, "/v1/agents", ("orchestration", "default")),
    (WRITE_METHODS, "/v1/orchestration", ("orchestration", "default")),
    (None, "/v1", ("default",)),
)


def rate_limit_groups(contexts: Iterable[RouteGroup]) -> tuple[RouteGroup, ...]:
    """The contexts' route groups, then the platform's."""
    return (*contexts, *PLATFORM_ROUTE_GROUPS)


def policies_for(method: str, path: str, groups: Iterable[RouteGroup]) -> tuple[str, ...]:
    """The stack of policies a request counts against (empty: not limited)."""
    for methods, prefix, policies in groups:
        if (methods is None or method in methods) and (
            path == prefix or path.startswith(prefix + "/")
        ):
            return policies
    return ()


@dataclass(frozen=True)
class Limit:
    policy: str
    spec: RateLimitPolicy
    scope: str
    id: str

    @property
    def key(self) -> str:
        return f"rl:{self.policy}:{self.scope}:{self.id}"


@dataclass(frozen=True)
class LimitState:
    policy: str
    limit: int
    window_s: int
    remaining: int
    reset_us: int
    retry_us: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    states: tuple[LimitState, ...]

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until the request would fit every limit (at least 1)."""
        return retry_after_seconds(max((s.retry_us for s in self.states), default=0))


def retry_after_seconds(wait_us: int) -> int:
    return max(1, math.ceil(wait_us / 1_000_000))


def _window(period_s: float) -> int:
    return max(1, math.ceil(period_s))


def policy_header(states: Sequence[LimitState]) -> str:
    """``RateLimit-Policy`` (draft-ietf-httpapi-ratelimit-headers, structured-field list)."""
    return ", ".join(f'"{s.policy}";q={s.limit};w={s.window_s}' for s in states)


def ratelimit_header(states: Sequence[LimitState]) -> str:
    """``RateLimit``: remaining units and seconds until the quota is fully restored."""
    return ", ".join(
        f'"{s.policy}";r={s.remaining};t={math.ceil(s.reset_us / 1_000_000)}' for s in states
    )


def response_headers(decision: Decision) -> dict[str, str]:
    """The draft headers for every limit, and the older trio for the closest one."""
    if not decision.states:
        return {}
    tightest = min(decision.states, key=lambda s: (s.remaining, -s.reset_us))
    headers = {
        "RateLimit-Policy": policy_header(decision.states),
        "RateLimit": ratelimit_header(decision.states),
        "RateLimit-Limit": str(tightest.limit),
        "RateLimit-Remaining": str(tightest.remaining),
        "RateLimit-Reset": str(math.ceil(tightest.reset_us / 1_000_000)),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


class RateLimiter:
    """Checks and counts a stack of limits atomically; the concurrent requests' checks go to
    Redis as one EVALSHA (``infra.coalesce``; redis-py reloads the script on NOSCRIPT)."""

    def __init__(self, redis: Redis) -> None:
        self._script = redis.register_script(GCRA_LUA)
        self._checks: Coalescer[Sequence[Limit], list[int]] = Coalescer(self._send)

    async def check(self, limits: Sequence[Limit]) -> Decision:
        started = time.perf_counter()
        try:
            values = await self._checks(limits)
        finally:
            RATELIMIT_CHECK_DURATION.observe(time.perf_counter() - started)
        states = tuple(
            LimitState(
                policy=lim.policy,
                limit=lim.spec.limit,
                window_s=_window(lim.spec.period_s),
                remaining=values[1 + 3 * i],
                reset_us=values[2 + 3 * i],
                retry_us=values[3 + 3 * i],
            )
            for i, lim in enumerate(limits)
        )
        return Decision(allowed=values[0] == 1, states=states)

    async def _send(self, batch: list[Sequence[Limit]]) -> list[list[int]]:
        keys: list[str] = []
        args: list[str | int] = [len(batch)]
        for limits in batch:
            args.append(len(limits))
            for limit in limits:
                keys.append(limit.key)
                args += [round(limit.spec.period_s * 1_000_000), limit.spec.limit, limit.spec.cost]
        raw = await self._script(keys=keys, args=args)
        results, at = [], 0
        for limits in batch:
            width = 1 + 3 * len(limits)
            results.append([int(v) for v in raw[at : at + width]])
            at += width
        return results


class RateLimitMiddleware:
    """ASGI middleware on /v1: 429 problem+json over a limit; headers on every answer.

    The limiter is taken from ``app.state.ratelimiter`` (set by the lifespan; None without
    Redis, which is handled like an unreachable Redis).
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        policies: Mapping[str, RateLimitPolicy],
        groups: tuple[RouteGroup, ...],
    ) -> None:
        self.app = app
        self.enabled = settings.rate_limit_enabled
        self.policies = policies
        self.groups = groups
        self.exempt = settings.rate_limit_exempt_networks
        self.trusted = settings.trusted_proxy_networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        names = policies_for(scope["method"], scope["path"], self.groups)
        ip = client_ip(scope, self.trusted) if names else ""
        if not names or in_networks(ip, self.exempt):
            await self.app(scope, receive, send)
            return
        who = await principal_of(scope)
        limits = [
            Limit(n, self.policies[n], *(who or ("ip", ip))) for n in names if n in self.policies
        ]
        limiter: RateLimiter | None = getattr(scope["app"].state, "ratelimiter", None)
        try:
            if limiter is None:
                raise RedisError("no Redis configured (UAIT_REDIS_URL is empty)")
            decision = await limiter.check(limits)
        except (RedisError, OSError) as exc:
            closed = [lim.policy for lim in limits if not lim.spec.fail_open]
            for lim in limits:
                decision_label = FAILED_CLOSED if not lim.spec.fail_open else FAILED_OPEN
                RATELIMIT_DECISIONS_OF(lim.policy, decision_label).inc()
            log.warning("rate limiter unavailable (%s); failing %s", exc, closed or "open")
            if closed:
                await send_problem(
                    send,
                    503,
                    "Rate limiter unavailable",
                    f"the {', '.join(closed)} limit cannot be checked; retry later",
                    "urn:uait:problem:rate-limiter-unavailable",
                    {"Retry-After": "5"},
                    scope["path"],
                )
                return
            await self.app(scope, receive, send)
            return
        refused = {s.policy for s in decision.states if s.retry_us > 0}
        for state in decision.states:
            label = ALLOWED if decision.allowed else LIMITED if state.policy in refused else None
            if label:
                RATELIMIT_DECISIONS_OF(state.policy, label).inc()
        headers = response_headers(decision)
        if not decision.allowed:
            await send_problem(
                send,
                429,
                "Too many requests",
                f"over the {', '.join(sorted(refused))} rate limit; retry after "
                f"{decision.retry_after_s} s",
                "urn:uait:problem:rate-limited",
                headers,
                scope["path"],
            )
            return
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *raw]}
            await send(message)

        await self.app(scope, receive, with_headers)
