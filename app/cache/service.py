"""The cache service: JSON values (orjson) under one key namespace in the shared Redis.

Every key a caller names is relative to the namespace (``<prefix>:<key>``), so patterns can never
reach rate limits, idempotency keys or breaker state. TTLs are spread by a jitter so keys written
together (a warm-up, an ``mset``) do not all expire in the same second. Pattern invalidation walks
the keyspace with ``SCAN`` and ``UNLINK`` in bounded batches: ``KEYS`` would block Redis for the
whole keyspace at once.
"""

from __future__ import annotations

import asyncio
import random
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping

    from redis.asyncio import Redis

_GLOB = set("*?[]\\")

# INCRBY, and an expiry only on the write that created the counter (Redis 6.2 has no EXPIRE NX).
_INCREMENT = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return value
"""


class CacheUnavailableError(RuntimeError):
    """Raised when Redis cannot be reached or refuses a cache command."""


class Cache:
    """Get, set and invalidate JSON values in Redis, under ``prefix``.

    ``default_ttl_s`` applies when a write names no TTL; ``jitter`` (0.1 = ±10 %) spreads every
    TTL; ``scan_batch`` bounds the keys one ``SCAN``/``UNLINK`` round touches.
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "uait:cache",
        default_ttl_s: float = 300.0,
        jitter: float = 0.1,
        scan_batch: int = 1000,
    ) -> None:
        if not prefix or _GLOB & set(prefix):
            raise ValueError(f"cache prefix {prefix!r} must be non-empty, without glob characters")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.redis = redis
        self.prefix = prefix
        self.default_ttl_s = default_ttl_s
        self.jitter = jitter
        self.scan_batch = scan_batch
        self._increment = redis.register_script(_INCREMENT)

    def key(self, key: str) -> str:
        if not key:
            raise ValueError("a cache key must not be empty")
        return f"{self.prefix}:{key}"

    def ttl_ms(self, ttl_s: float | None = None) -> int:
        """A TTL in milliseconds, spread uniformly by ±``jitter``; never below 1 ms."""
        base = (self.default_ttl_s if ttl_s is None else ttl_s) * 1000
        if self.jitter:
            base *= 1 + random.uniform(-self.jitter, self.jitter)  # noqa: S311  (not a secret)
        return max(int(base), 1)

    async def get(self, key: str, default: Any = None) -> Any:
        raw = await redis_call(self.redis.get(self.key(key)))
        return default if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        await redis_call(self.redis.set(self.key(key), orjson.dumps(value), px=self.ttl_ms(ttl_s)))

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await redis_call(self.redis.unlink(*(self.key(k) for k in keys))))

    async def exists(self, key: str) -> bool:
        return bool(await redis_call(self.redis.exists(self.key(key))))

    async def mget(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of the keys that exist (missing keys are left out)."""
        names = list(keys)
        if not names:
            return {}
        raws = await redis_call(self.redis.mget([self.key(k) for k in names]))
        return {k: orjson.loads(raw) for k, raw in zip(names, raws, strict=True) if raw is not None}

    async def mset(self, values: Mapping[str, Any], ttl_s: float | None = None) -> None:
        """Write many values in one round trip, each with its own jittered TTL."""
        if not values:
            return
        pipe = self.redis.pipeline(transaction=False)
        for k, v in values.items():
            pipe.set(self.key(k), orjson.dumps(v), px=self.ttl_ms(ttl_s))
        await redis_call(pipe.execute())

    async def increment(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        """Add ``by`` atomically; a counter created by this call expires after ``ttl_s``.

        A counter is stored as Redis' integer string, which is also its JSON, so ``get`` reads it.
        """
        ttl = self.ttl_ms(ttl_s) if ttl_s is not None else 0
        return int(await redis_call(self._increment(keys=[self.key(key)], args=[by, ttl])))

    async def decrement(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        return await self.increment(key, -by, ttl_s)

    async def expire(self, key: str, ttl_s: float) -> bool:
        """Set a key's TTL; False when the key does not exist."""
        return bool(await redis_call(self.redis.pexpire(self.key(key), self.ttl_ms(ttl_s))))

    async def warm(
        self,
        keys_or_pattern: str | Iterable[str],
        loader: Callable[[list[str]], Awaitable[Mapping[str, Any]]],
        ttl_s: float | None = None,
    ) -> int:
        """Fill the cache ahead of reads; returns how many values were written.

        With a list of keys, ``loader`` gets the ones that are missing; with a pattern (a
        string), it gets the existing keys that match, batch by batch, to refresh them. The
        loader returns a mapping of key to value; keys it leaves out are not written.
        """
        written = 0
        if isinstance(keys_or_pattern, str):
            async for batch in self._scan(keys_or_pattern):
                fresh = await loader(batch)
                await self.mset(fresh, ttl_s)
                written += len(fresh)
            return written
        names = list(dict.fromkeys(keys_or_pattern))
        for start in range(0, len(names), self.scan_batch):
            chunk = names[start : start + self.scan_batch]
            pipe = self.redis.pipeline(transaction=False)
            for k in chunk:
                pipe.exists(self.key(k))
            present = await redis_call(pipe.execute())
            missing = [k for k, here in zip(chunk, present, strict=True) if not here]
            if missing:
                fresh = await loader(missing)
                await self.mset(fresh, ttl_s)
                written += len(fresh)
        return written

    async def invalidate_pattern(self, pattern: str) -> int:
        """Remove every key matching ``pattern`` (a Redis glob, relative to the namespace).

        One ``SCAN`` of ``scan_batch`` and one ``UNLINK`` per round, yielding to the event loop
        in between, so Redis serves other clients between rounds. Returns the keys removed.
        Keys written while the scan runs may survive it (SCAN's guarantee covers the keys present
        for the whole scan).
        """
        removed = 0
        async for batch in self._scan(pattern):
            removed += int(await redis_call(self.redis.unlink(*(self.key(k) for k in batch))))
        return removed

    async def _scan(self, pattern: str) -> AsyncIterator[list[str]]:
        """Batches of matching keys, relative to the namespace (each batch non-empty)."""
        match = self.key(pattern)
        cut = len(self.prefix) + 1
        cursor = 0
        while True:
            cursor, found = await redis_call(
                self.redis.scan(cursor, match=match, count=self.scan_batch)
            )
            if found:
                yield [k.decode()[cut:] if isinstance(k, bytes) else k[cut:] for k in found]
            if cursor == 0:
                return
            await asyncio.sleep(0)


async def redis_call(awaitable: Awaitable[Any]) -> Any:
    """Await a Redis command; any Redis or socket error becomes ``CacheUnavailableError``."""
    try:
        return await awaitable
    except (RedisError, OSError) as exc:
        raise CacheUnavailableError(f"cache unavailable: {exc}") from exc
