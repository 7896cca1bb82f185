"""One named breaker: admission, results and operator actions, each one call of the script."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import re
import time
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from redis.exceptions import NoScriptError, RedisError

from infra.breakers.model import (
    NAME_PATTERN,
    BreakerConfig,
    BreakerOpenError,
    BreakerState,
    BreakerStatus,
)
from infra.breakers.script import (
    CHANGES_KEY,
    LUA,
    LUA_SHA,
    REGISTRY_KEY,
    Permit,
    Reply,
    ms,
    when,
)
from telemetry.metrics import BREAKER_CALLS, BREAKER_STATE, BREAKER_TRANSITIONS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from redis.asyncio import Redis

T = TypeVar("T")

log = logging.getLogger("uait.breaker")
_NAME = re.compile(NAME_PATTERN)


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

    async def run(
        self,
        op: str,
        *,
        epoch: int = 0,
        failed: bool = False,
        slow: bool = False,
        probe: bool = False,
        target: str = "",
        reason: str = "",
    ) -> Reply:
        c = self.config
        register = op != "status" and not self._registered
        args: list[str | int | float] = [
            op,
            self.name,
            c.window_size,
            c.min_calls,
            c.failure_rate,
            c.slow_call_rate,
            ms(c.open_wait_s),
            c.half_open_probes,
            ms(c.probe_lease_s),
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
        reply = Reply.parse(raw)
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

    async def _acquire(self) -> Permit | None:
        try:
            reply = await self.run("acquire")
        except RedisError as exc:
            if not self.config.fail_open:
                BREAKER_CALLS.labels(self.name, "rejected").inc()
                raise BreakerOpenError(self.name, BreakerState.OPEN) from exc
            log.warning("breaker %s: Redis unavailable, calling unguarded: %s", self.name, exc)
            return None
        if not reply.allowed:
            BREAKER_CALLS.labels(self.name, "rejected").inc()
            retry = reply.opened_at_ms + ms(self.config.open_wait_s) if reply.opened_at_ms else 0
            raise BreakerOpenError(
                self.name,
                reply.state,
                when(retry) if reply.state is BreakerState.OPEN else None,
            )
        return Permit(reply.epoch, reply.probe)

    async def _record(self, permit: Permit | None, *, failed: bool, slow: bool) -> None:
        if permit is None:
            return
        try:
            await self.run(
                "record", epoch=permit.epoch, failed=failed, slow=slow, probe=permit.probe
            )
        except RedisError as exc:
            log.warning("breaker %s: could not record a result: %s", self.name, exc)

    async def _release(self, permit: Permit | None) -> None:
        if permit is None or not permit.probe:
            return
        with contextlib.suppress(RedisError):
            await self.run("release", epoch=permit.epoch, probe=True)

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
        return self.status_of(await self.run("force", target="open", reason=reason))

    async def force_close(self, reason: str = "forced closed by an operator") -> BreakerStatus:
        """Let every call through until reset (results are still counted, nothing opens it)."""
        return self.status_of(await self.run("force", target="close", reason=reason))

    async def reset(self, reason: str = "reset by an operator") -> BreakerStatus:
        """Back to closed with an empty window (ends a forced state)."""
        return self.status_of(await self.run("force", target="reset", reason=reason))

    async def status(self) -> BreakerStatus:
        """The shared state and window (read only)."""
        return self.status_of(await self.run("status"))

    def status_of(self, reply: Reply, config: dict[str, Any] | None = None) -> BreakerStatus:
        half_open = 0
        if reply.state is BreakerState.OPEN:
            half_open = reply.opened_at_ms + ms(self.config.open_wait_s)
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
            opened_at=when(reply.opened_at_ms),
            half_open_at=when(half_open),
            config=config if config is not None else self.config.model_dump(),
        )
