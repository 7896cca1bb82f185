"""Circuit breakers for external calls, with their state shared by every process through Redis.

A breaker watches the results of the last ``window_size`` calls. Once at least ``min_calls`` are
in the window and the failure rate (or the rate of calls slower than ``slow_call_s``) reaches its
threshold, it **opens**: callers fail fast with :class:`BreakerOpenError` (or get the fallback)
without touching the backend. After ``open_wait_s`` the next caller moves it to **half-open**, in
which at most ``half_open_probes`` trial calls run at a time while everybody else still fails
fast; when that many probes have succeeded it closes, and one failed (or slow) probe opens it
again. A call running longer than ``call_timeout_s`` is cut (``asyncio.timeout``) and counted as a
failure. Operators can force a breaker open or closed; a forced state sticks until a reset.

The window, the state and the probe slots live in one Redis hash (plus a list for the window) and
change only through one Lua script (``breaker.lua``, run with EVALSHA and loaded again on
NOSCRIPT). Admission and every recorded result are each one atomic step that reads the clock of
Redis, so all processes see the same breaker, and 200 concurrent failures open it exactly once:
every change of state bumps an epoch, and results of calls admitted under an older epoch no
longer count. A call costs two round trips to Redis (admit, record), about a millisecond, which
is nothing next to a call to an AI backend.

Why not ``purgatory`` (3.0): its breaker is a domain model evaluated in the process (a count of
consecutive failures against one threshold, with states closed/opened/half-opened that let every
caller through once the TTL has passed), and its Redis repository only persists that model's
fields piecewise (``update_state``, ``inc_failures``: GET, modify, SET). A rolling window with
rates, slow calls, a limited number of probes and forced states would mean replacing the model,
the state classes and the repository, which is all of it, and the read-modify-write updates
could still not be made atomic behind its repository interface. So this module is written
directly on Redis.

If Redis cannot be reached, calls go through unguarded (``fail_open=True``, the default: Redis
trouble must not stop the AI backends) or fail fast (``fail_open=False``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import inspect
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import NoScriptError, RedisError

from telemetry.metrics import BREAKER_CALLS, BREAKER_STATE, BREAKER_TRANSITIONS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

    from infra.settings import Settings

T = TypeVar("T")

log = logging.getLogger("uait.breaker")

LUA = (Path(__file__).with_name("breaker.lua")).read_text(encoding="utf-8")
LUA_SHA = hashlib.sha1(LUA.encode(), usedforsecurity=False).hexdigest()

REGISTRY_KEY = "uait:breakers"
CHANGES_KEY = "uait:breakers:changes"
"""A capped stream of every state change, written by the script (see app.auth.breaker_audit)."""
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,99}$"
_NAME = re.compile(NAME_PATTERN)


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"

    @property
    def code(self) -> int:
        """The value of the ``uait_breaker_state`` gauge."""
        return _CODES[self]


_CODES = {
    BreakerState.CLOSED: 0,
    BreakerState.OPEN: 1,
    BreakerState.HALF_OPEN: 2,
    BreakerState.FORCED_OPEN: 3,
    BreakerState.FORCED_CLOSED: 4,
}


class BreakerOpenError(Exception):
    """The breaker is open (or its half-open probes are taken): the call was not made."""

    def __init__(self, name: str, state: BreakerState, retry_at: datetime | None = None) -> None:
        super().__init__(f"circuit breaker {name!r} is {state.value}")
        self.name = name
        self.state = state
        self.retry_at = retry_at


class BreakerConfig(BaseModel):
    """How a breaker judges its calls. Rates are percentages of the calls in the window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_size: int = Field(default=20, ge=1, le=1000, description="the last N calls count")
    min_calls: int = Field(default=10, ge=1, description="no opening below this many calls")
    failure_rate: float = Field(default=50.0, gt=0, le=100, description="percent failed: open")
    slow_call_s: float = Field(default=10.0, gt=0, description="a call this slow is slow")
    slow_call_rate: float = Field(default=80.0, gt=0, le=100, description="percent slow: open")
    call_timeout_s: float | None = Field(default=30.0, gt=0, description="cut after; None = never")
    open_wait_s: float = Field(default=30.0, gt=0, description="time open before half-open")
    half_open_probes: int = Field(default=3, ge=1, le=100, description="trial calls at a time")
    fail_open: bool = Field(default=True, description="call unguarded while Redis is down")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BreakerConfig:
        """The ``UAIT_BREAKER_*`` defaults, with per-breaker overrides."""
        values: dict[str, Any] = {
            "window_size": settings.breaker_window_size,
            "min_calls": settings.breaker_min_calls,
            "failure_rate": settings.breaker_failure_rate,
            "slow_call_s": settings.breaker_slow_call_s,
            "slow_call_rate": settings.breaker_slow_call_rate,
            "call_timeout_s": settings.breaker_call_timeout_s,
            "open_wait_s": settings.breaker_open_wait_s,
            "half_open_probes": settings.breaker_half_open_probes,
        }
        return cls(**(values | overrides))

    @property
    def probe_lease_s(self) -> float:
        """How long a probe slot is held before it is presumed lost (its caller died)."""
        return (self.call_timeout_s or self.slow_call_s * 6) + 5.0


class BreakerStatus(BaseModel):
    """A breaker's state and window, as stored in Redis."""

    name: str
    state: BreakerState
    state_code: int
    calls: int = Field(description="calls in the window")
    failures: int
    slow: int
    failure_rate: float = Field(description="percent of the calls in the window")
    slow_call_rate: float
    probes_in_flight: int
    probe_successes: int
    opened_at: datetime | None
    half_open_at: datetime | None = Field(description="when an open breaker admits probes")
    config: dict[str, Any] | None = Field(description="as last registered by a caller")


@dataclass(frozen=True)
class _Reply:
    from_state: BreakerState | None
    state: BreakerState
    epoch: int
    allowed: bool
    probe: bool
    reason: str
    calls: int
    failures: int
    slow: int
    opened_at_ms: int
    now_ms: int
    probes_in_flight: int
    probe_successes: int

    @classmethod
    def parse(cls, raw: list[Any]) -> _Reply:
        text = [x.decode() if isinstance(x, bytes) else x for x in raw]
        return cls(
            from_state=BreakerState(text[0]) if text[0] else None,
            state=BreakerState(text[1]),
            epoch=int(text[2]),
            allowed=bool(int(text[3])),
            probe=bool(int(text[4])),
            reason=str(text[5]),
            calls=int(text[6]),
            failures=int(text[7]),
            slow=int(text[8]),
            opened_at_ms=int(text[9]),
            now_ms=int(text[10]),
            probes_in_flight=int(text[11]),
            probe_successes=int(text[12]),
        )


@dataclass(frozen=True)
class _Permit:
    epoch: int
    probe: bool


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _when(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None


class Breaker:
    """A named circuit breaker whose state every process shares through Redis.

    ``async with breaker.guard(): ...`` runs a block under the breaker (with the call timeout);
    ``await breaker.call(fn, *args, fallback=...)`` runs a coroutine function and, when the
    breaker is open or the call fails, answers with ``fallback(exc)`` instead (when one is given).
    Exceptions of the types in ``ignore`` (e.g. a 4xx from the backend: it answered) count as
    successes.
    """

    def __init__(
        self,
        name: str,
        redis: Redis,
        config: BreakerConfig | None = None,
        *,
        fallback: Callable[[Exception], Any] | None = None,
        ignore: tuple[type[BaseException], ...] = (),
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"breaker name {name!r} does not match {NAME_PATTERN}")
        self.name = name
        self.redis = redis
        self.config = config or BreakerConfig()
        self.fallback = fallback
        self.ignore = ignore
        self._keys = (
            f"uait:breaker:{{{name}}}",
            f"uait:breaker:{{{name}}}:window",
            REGISTRY_KEY,
            CHANGES_KEY,
        )
        self._config_json = orjson.dumps(self.config.model_dump()).decode()
        self._registered = False

    # --- Redis ---------------------------------------------------------------------------------

    async def _run(
        self,
        op: str,
        *,
        epoch: int = 0,
        failed: bool = False,
        slow: bool = False,
        probe: bool = False,
        target: str = "",
        reason: str = "",
    ) -> _Reply:
        c = self.config
        register = op != "status" and not self._registered
        args: list[str | int | float] = [
            op,
            self.name,
            c.window_size,
            c.min_calls,
            c.failure_rate,
            c.slow_call_rate,
            _ms(c.open_wait_s),
            c.half_open_probes,
            _ms(c.probe_lease_s),
            self._config_json if register else "",
            epoch,
            int(failed),
            int(slow),
            int(probe),
            target,
            reason,
        ]
        try:
            raw = await self.redis.evalsha(LUA_SHA, len(self._keys), *self._keys, *args)
        except NoScriptError:
            # A restarted or flushed Redis: load the script once, then EVALSHA works again.
            await self.redis.script_load(LUA)
            raw = await self.redis.evalsha(LUA_SHA, len(self._keys), *self._keys, *args)
        if register:
            self._registered = True
        reply = _Reply.parse(raw)
        BREAKER_STATE.labels(self.name).set(reply.state.code)
        if reply.from_state is not None:
            self._changed(reply.from_state, reply.state, reply.reason)
        return reply

    def _changed(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        BREAKER_TRANSITIONS.labels(self.name, new.value).inc()
        event = {"breaker": self.name, "from": old.value, "to": new.value, "reason": reason}
        level = logging.WARNING if new in (BreakerState.OPEN, BreakerState.FORCED_OPEN) else 20
        log.log(
            level,
            "breaker state changed breaker=%s from=%s to=%s reason=%s",
            self.name,
            old.value,
            new.value,
            reason,
            extra={"breaker_event": event},
        )

    # --- guarding calls ------------------------------------------------------------------------

    async def _acquire(self) -> _Permit | None:
        try:
            reply = await self._run("acquire")
        except RedisError as exc:
            if not self.config.fail_open:
                BREAKER_CALLS.labels(self.name, "rejected").inc()
                raise BreakerOpenError(self.name, BreakerState.OPEN) from exc
            log.warning("breaker %s: Redis unavailable, calling unguarded: %s", self.name, exc)
            return None
        if not reply.allowed:
            BREAKER_CALLS.labels(self.name, "rejected").inc()
            retry = reply.opened_at_ms + _ms(self.config.open_wait_s) if reply.opened_at_ms else 0
            raise BreakerOpenError(
                self.name,
                reply.state,
                _when(retry) if reply.state is BreakerState.OPEN else None,
            )
        return _Permit(reply.epoch, reply.probe)

    async def _record(self, permit: _Permit | None, *, failed: bool, slow: bool) -> None:
        if permit is None:
            return
        try:
            await self._run(
                "record", epoch=permit.epoch, failed=failed, slow=slow, probe=permit.probe
            )
        except RedisError as exc:
            log.warning("breaker %s: could not record a result: %s", self.name, exc)

    async def _release(self, permit: _Permit | None) -> None:
        if permit is None or not permit.probe:
            return
        with contextlib.suppress(RedisError):
            await self._run("release", epoch=permit.epoch, probe=True)

    @contextlib.asynccontextmanager
    async def guard(self) -> AsyncIterator[None]:
        """Run the block under the breaker: fail fast when open, cut it at the call timeout.

        Raises :class:`BreakerOpenError` before the block runs when the breaker refuses the call,
        and ``TimeoutError`` when the block ran past ``call_timeout_s``.
        """
        permit = await self._acquire()
        started = time.monotonic()
        deadline = asyncio.timeout(self.config.call_timeout_s)
        try:
            async with deadline:
                yield
        except Exception as exc:
            slow = time.monotonic() - started >= self.config.slow_call_s
            if isinstance(exc, self.ignore):
                BREAKER_CALLS.labels(self.name, "slow" if slow else "success").inc()
                await self._record(permit, failed=False, slow=slow)
            else:
                timed_out = deadline.expired()
                BREAKER_CALLS.labels(self.name, "timeout" if timed_out else "failure").inc()
                await self._record(permit, failed=True, slow=slow)
            raise
        except BaseException:
            # Cancelled (not by our timeout) or interrupted: no verdict on the backend.
            await asyncio.shield(self._release(permit))
            raise
        slow = time.monotonic() - started >= self.config.slow_call_s
        BREAKER_CALLS.labels(self.name, "slow" if slow else "success").inc()
        await self._record(permit, failed=False, slow=slow)

    async def call(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        fallback: Callable[[Exception], Any] | None = None,
        **kwargs: Any,
    ) -> T:
        """``await fn(*args, **kwargs)`` under the breaker.

        When the breaker refuses the call or the call fails (an exception, the timeout), the
        answer is ``fallback(exc)`` (awaited if it returns an awaitable), or the breaker's own
        fallback; with neither, the exception propagates.
        """
        chosen = fallback or self.fallback
        try:
            async with self.guard():
                return await fn(*args, **kwargs)
        except Exception as exc:
            if chosen is None or isinstance(exc, self.ignore):
                raise
            answer = chosen(exc)
            if inspect.isawaitable(answer):
                answer = await answer
            return answer  # type: ignore[no-any-return]

    # --- operators -----------------------------------------------------------------------------

    async def force_open(self, reason: str = "forced open by an operator") -> BreakerStatus:
        """Open until reset, whatever the calls do."""
        return self._status(await self._run("force", target="open", reason=reason))

    async def force_close(self, reason: str = "forced closed by an operator") -> BreakerStatus:
        """Let every call through until reset (results are still counted, nothing opens it)."""
        return self._status(await self._run("force", target="close", reason=reason))

    async def reset(self, reason: str = "reset by an operator") -> BreakerStatus:
        """Back to closed with an empty window (ends a forced state)."""
        return self._status(await self._run("force", target="reset", reason=reason))

    async def status(self) -> BreakerStatus:
        """The shared state and window (read only)."""
        return self._status(await self._run("status"))

    def _status(self, reply: _Reply, config: dict[str, Any] | None = None) -> BreakerStatus:
        half_open = 0
        if reply.state is BreakerState.OPEN:
            half_open = reply.opened_at_ms + _ms(self.config.open_wait_s)
        return BreakerStatus(
            name=self.name,
            state=reply.state,
            state_code=reply.state.code,
            calls=reply.calls,
            failures=reply.failures,
            slow=reply.slow,
            failure_rate=round(reply.failures * 100 / reply.calls, 2) if reply.calls else 0.0,
            slow_call_rate=round(reply.slow * 100 / reply.calls, 2) if reply.calls else 0.0,
            probes_in_flight=reply.probes_in_flight,
            probe_successes=reply.probe_successes,
            opened_at=_when(reply.opened_at_ms),
            half_open_at=_when(half_open),
            config=config if config is not None else self.config.model_dump(),
        )


class BreakerRegistry:
    """Every breaker any process has used, by name (the names are a Redis set)."""

    def __init__(self, redis: Redis, default_config: BreakerConfig | None = None) -> None:
        self.redis = redis
        self.default_config = default_config or BreakerConfig()
        self._breakers: dict[str, Breaker] = {}

    async def names(self) -> list[str]:
        members = await self.redis.smembers(REGISTRY_KEY)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def exists(self, name: str) -> bool:
        return bool(await self.redis.sismember(REGISTRY_KEY, name))

    async def get(self, name: str, config: BreakerConfig | None = None) -> Breaker:
        """The breaker of that name, with its stored config unless one is given."""
        if config is None and (known := self._breakers.get(name)) is not None:
            return known
        breaker = Breaker(name, self.redis, config or await self._stored_config(name))
        self._breakers[name] = breaker
        return breaker

    async def status(self, name: str) -> BreakerStatus:
        breaker = await self.get(name)
        stored = await self._stored_config_dict(name)
        return breaker._status(await breaker._run("status"), stored)

    async def statuses(self) -> list[BreakerStatus]:
        return [await self.status(name) for name in await self.names()]

    async def _stored_config_dict(self, name: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(f"uait:breaker:{{{name}}}", "config")
        if not raw:
            return None
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else None

    async def _stored_config(self, name: str) -> BreakerConfig:
        stored = await self._stored_config_dict(name)
        if stored is None:
            return self.default_config
        try:
            return BreakerConfig(**stored)
        except ValueError:
            return self.default_config
