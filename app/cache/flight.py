"""Cache-aside with single-flight across replicas and stale-while-revalidate.

One lookup is one Lua call that reads the value and, on a miss or a soft-expired value, tries to
take the key's loader lock (``SET NX PX`` with a random token). Exactly one caller in the whole
fleet holds the lock and runs the loader; the others poll for its value (a miss) or are answered
at once with the stale value (past the TTL, within the stale window). The holder writes the value
and releases the lock with a compare-and-delete, so it never frees a lock that expired and was
taken by another process. If the holder dies the lock expires and a waiter takes over.

Within one process, concurrent lookups of the same key share one Redis round trip.

Keys may carry a generation, read from a Redis hash in the same Lua call: bumping the generation
(see ``projections.knowledge.cache_invalidation``) makes every earlier value unreachable, so a
loader that read the read model before a change can only ever fill a key nobody asks for again.

When Redis is unreachable a lookup calls the loader directly (fail open) and counts an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson

from app.cache.service import CacheUnavailableError, redis_call
from telemetry.metrics import CACHE_FLIGHT_WAITS, CACHE_LOAD_DURATION, CACHE_LOADS, CACHE_LOOKUPS

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from app.cache.service import Cache

log = logging.getLogger("uait.cache")
WARN_EVERY_S = 10.0

# KEYS[1] value key (without generation), KEYS[2] generation hash (optional)
# ARGV[1] lock token, ARGV[2] lock ms, ARGV[3] stale window ms, ARGV[4] generation field
_LOOKUP = """
local key = KEYS[1]
if #KEYS > 1 then
  key = key .. '@' .. (redis.call('HGET', KEYS[2], ARGV[4]) or '0')
end
local lock = key .. ':lock'
local value = redis.call('GET', key)
if value then
  local ttl = redis.call('PTTL', key)
  if ttl == -1 or ttl > tonumber(ARGV[3]) then return {key, value, 'hit'} end
  if redis.call('SET', lock, ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {key, value, 'refresh'}
  end
  return {key, value, 'stale'}
end
if redis.call('SET', lock, ARGV[1], 'NX', 'PX', ARGV[2]) then return {key, false, 'load'} end
return {key, false, 'wait'}
"""

# KEYS[1] value key, KEYS[2] lock; ARGV[1] token, ARGV[2] lock ms
_POLL = """
local value = redis.call('GET', KEYS[1])
if value then return {value, 'filled'} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, 'load'} end
return {false, 'wait'}
"""

# KEYS[1] value key, KEYS[2] lock; ARGV[1] token, ARGV[2] value, ARGV[3] value ms
_STORE = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS[1] lock; ARGV[1] token
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class CacheAside:
    """One named cache of loader results (``fetch``), in ``cache``'s namespace.

    ``ttl_s`` is how long a value is fresh (jittered); for ``stale_s`` more it is still served
    while one caller reloads it. ``lock_timeout_s`` bounds a loader's lock, so a dead holder
    delays the others by at most that long.
    """

    def __init__(
        self,
        cache: Cache,
        name: str,
        *,
        ttl_s: float,
        stale_s: float = 0.0,
        lock_timeout_s: float = 5.0,
        poll_s: float = 0.005,
    ) -> None:
        self.cache = cache
        self.name = name
        self.ttl_s = ttl_s
        self.stale_ms = int(stale_s * 1000)
        self.lock_ms = max(int(lock_timeout_s * 1000), 1)
        self.poll_s = poll_s
        redis = cache.redis
        self._lookup = redis.register_script(_LOOKUP)
        self._poll = redis.register_script(_POLL)
        self._store = redis.register_script(_STORE)
        self._release = redis.register_script(_RELEASE)
        self._in_flight: dict[tuple[str, str | None], asyncio.Task[Any]] = {}
        self._refreshes: set[asyncio.Task[Any]] = set()
        self._warned_at = -WARN_EVERY_S

    async def fetch(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        *,
        generation: tuple[str, str] | None = None,
    ) -> Any:
        """The cached value of ``key``, loading it once fleet-wide when missing.

        ``generation`` is ``(hash key, field)``: the field's value in that Redis hash becomes part
        of the key. ``loader`` returns any orjson-serialisable value (None included).
        """
        local = (key, generation[1] if generation else None)
        task = self._in_flight.get(local)
        if task is None:
            # A task of its own: a caller that goes away does not cancel the others' lookup.
            task = asyncio.create_task(self._fetch(key, loader, generation))
            self._in_flight[local] = task
            task.add_done_callback(lambda done: self._settled(local, done))
        else:
            CACHE_LOOKUPS.labels(self.name, "shared").inc()
        return await asyncio.shield(task)

    def _settled(self, local: tuple[str, str | None], task: asyncio.Task[Any]) -> None:
        if self._in_flight.get(local) is task:
            del self._in_flight[local]
        if not task.cancelled():
            task.exception()  # retrieved, even when every caller went away

    async def _fetch(
        self,
        key: str,
        loader: Callable[[], Awaitable[Any]],
        generation: tuple[str, str] | None,
    ) -> Any:
        token = secrets.token_hex(16)
        keys = [self.cache.key(f"{self.name}:{key}")]
        field = ""
        if generation is not None:
            keys.append(generation[0])
            field = generation[1]
        try:
            full_key, raw, state = await redis_call(
                self._lookup(keys=keys, args=[token, self.lock_ms, self.stale_ms, field])
            )
        except CacheUnavailableError as exc:
            CACHE_LOOKUPS.labels(self.name, "error").inc()
            now = time.monotonic()
            if now - self._warned_at > WARN_EVERY_S:  # the metric counts each; the log samples
                self._warned_at = now
                log.warning("cache %s unavailable, reading the read model: %s", self.name, exc)
            return await self._load(loader)
        lock = full_key + b":lock"
        if state == b"hit":
            CACHE_LOOKUPS.labels(self.name, "hit").inc()
            return orjson.loads(raw)
        if state in (b"stale", b"refresh"):
            CACHE_LOOKUPS.labels(self.name, "stale").inc()
            if state == b"refresh":
                task = asyncio.create_task(self._load_and_store(full_key, lock, token, loader))
                self._refreshes.add(task)
                task.add_done_callback(self._refreshed)
            return orjson.loads(raw)
        CACHE_LOOKUPS.labels(self.name, "miss").inc()
        if state == b"load":
            return await self._load_and_store(full_key, lock, token, loader)
        return await self._wait(full_key, lock, token, loader)

    async def _wait(
        self, key: bytes, lock: bytes, token: str, loader: Callable[[], Awaitable[Any]]
    ) -> Any:
        """Poll until the holder's value arrives, or its lock ends and this caller loads."""
        deadline = time.monotonic() + self.lock_ms / 1000 + 1.0
        delay = self.poll_s
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.05)
            try:
                raw, state = await redis_call(
                    self._poll(keys=[key, lock], args=[token, self.lock_ms])
                )
            except CacheUnavailableError:
                break
            if state == b"filled":
                CACHE_FLIGHT_WAITS.labels(self.name, "filled").inc()
                return orjson.loads(raw)
            if state == b"load":
                CACHE_FLIGHT_WAITS.labels(self.name, "took_over").inc()
                return await self._load_and_store(key, lock, token, loader)
        CACHE_FLIGHT_WAITS.labels(self.name, "timeout").inc()
        return await self._load(loader)

    async def _load(self, loader: Callable[[], Awaitable[Any]]) -> Any:
        started = time.perf_counter()
        try:
            value = await loader()
        except BaseException:
            CACHE_LOADS.labels(self.name, "error").inc()
            raise
        finally:
            CACHE_LOAD_DURATION.labels(self.name).observe(time.perf_counter() - started)
        CACHE_LOADS.labels(self.name, "ok").inc()
        return value

    async def _load_and_store(
        self, key: bytes, lock: bytes, token: str, loader: Callable[[], Awaitable[Any]]
    ) -> Any:
        try:
            value = await self._load(loader)
        except BaseException:
            with contextlib.suppress(CacheUnavailableError):
                await redis_call(self._release(keys=[lock], args=[token]))
            raise
        ttl_ms = self.cache.ttl_ms(self.ttl_s) + self.stale_ms
        try:
            await redis_call(
                self._store(keys=[key, lock], args=[token, orjson.dumps(value), ttl_ms])
            )
        except CacheUnavailableError as exc:
            log.warning("cache %s: could not store a value: %s", self.name, exc)
        return value

    def _refreshed(self, task: asyncio.Task[Any]) -> None:
        self._refreshes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("cache %s: a background reload failed: %r", self.name, task.exception())

    async def close(self) -> None:
        """Wait for background reloads (at shutdown)."""
        if self._refreshes:
            await asyncio.gather(*self._refreshes, return_exceptions=True)
