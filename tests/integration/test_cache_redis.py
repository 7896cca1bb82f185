"""The cache service and cache-aside with single-flight, against the session's real Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from redis.asyncio import Redis

from app.cache import Cache, CacheAside, CacheUnavailableError
from bench.cache import PingProbe
from infra.settings import Settings
from infra.stack import EmbeddedStack
from telemetry.metrics import REGISTRY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(endpoints: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(endpoints.redis_url, max_connections=100)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def cache(redis: Redis, prefix: str) -> Cache:
    return Cache(redis, prefix=prefix, default_ttl_s=60, jitter=0.1, scan_batch=500)


def sample(name: str, **labels: str) -> float:
    value = REGISTRY.get_sample_value(name, labels)
    return value or 0.0


class CountingLoader:
    """A loader that counts its calls and takes ``delay_s`` like a slow query."""

    def __init__(self, value: Any = None, delay_s: float = 0.0) -> None:
        self.calls = 0
        self.value = value
        self.delay_s = delay_s

    async def __call__(self) -> Any:
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        return self.value if self.value is not None else {"call": self.calls}


# --- the Cache service ----------------------------------------------------------------------


async def test_set_then_get_round_trips_json_values_and_a_missing_key_gives_the_default(
    cache: Cache,
) -> None:
    value = {"title": "Café ☕", "tags": ["a", "b"], "n": 3, "x": 1.5, "none": None}
    await cache.set("doc:1", value, ttl_s=30)
    assert await cache.get("doc:1") == value
    assert await cache.get("doc:missing") is None
    assert await cache.get("doc:missing", default="fallback") == "fallback"
    await cache.set("null", None)
    assert await cache.exists("null")


async def test_set_writes_under_the_namespace_with_a_jittered_ttl(
    cache: Cache, redis: Redis, prefix: str
) -> None:
    for i in range(50):
        await cache.set(f"k{i}", i, ttl_s=100)
    ttls = [await redis.pttl(f"{prefix}:k{i}") for i in range(50)]
    assert all(90_000 - 50 <= t <= 110_000 for t in ttls), ttls
    assert len(set(ttls)) > 10, "the TTLs were not spread"
    assert await redis.get(f"{prefix}:k7") == b"7"


async def test_delete_and_exists_count_only_the_keys_that_were_there(cache: Cache) -> None:
    await cache.mset({"a": 1, "b": 2})
    assert await cache.exists("a")
    assert await cache.delete("a", "b", "c") == 2
    assert not await cache.exists("a")
    assert await cache.delete() == 0


async def test_mget_leaves_out_missing_keys_and_mset_writes_each_with_a_ttl(
    cache: Cache, redis: Redis, prefix: str
) -> None:
    await cache.mset({"m1": {"v": 1}, "m2": [2], "m3": "three"}, ttl_s=20)
    assert await cache.mget(["m1", "m2", "nope", "m3"]) == {
        "m1": {"v": 1},
        "m2": [2],
        "m3": "three",
    }
    assert await cache.mget([]) == {}
    assert 17_000 <= await redis.pttl(f"{prefix}:m2") <= 22_000


async def test_increment_and_decrement_are_atomic_and_the_ttl_is_set_only_on_creation(
    cache: Cache, redis: Redis, prefix: str
) -> None:
    results = await asyncio.gather(*(cache.increment("hits", ttl_s=50) for _ in range(100)))
    assert sorted(results) == list(range(1, 101))
    assert await cache.get("hits") == 100
    first_ttl = await redis.pttl(f"{prefix}:hits")
    assert 44_000 <= first_ttl <= 55_000
    assert await cache.decrement("hits", 30, ttl_s=1) == 70
    assert await redis.pttl(f"{prefix}:hits") > 40_000, "a later write must not shorten it"
    assert await cache.increment("plain") == 1
    assert await redis.pttl(f"{prefix}:plain") == -1


async def test_expire_sets_a_ttl_and_says_false_for_a_missing_key(
    cache: Cache, redis: Redis, prefix: str
) -> None:
    await cache.set("e", 1, ttl_s=1000)
    assert await cache.expire("e", 5)
    assert 4_000 <= await redis.pttl(f"{prefix}:e") <= 5_600
    assert not await cache.expire("never-set", 5)


async def test_warm_with_keys_loads_only_the_missing_ones(cache: Cache) -> None:
    await cache.set("w:1", "cached")
    asked: list[list[str]] = []

    async def loader(keys: list[str]) -> dict[str, Any]:
        asked.append(keys)
        return {k: f"loaded {k}" for k in keys if k != "w:3"}

    written = await cache.warm(["w:1", "w:2", "w:3", "w:2"], loader)
    assert asked == [["w:2", "w:3"]]
    assert written == 1
    assert await cache.mget(["w:1", "w:2", "w:3"]) == {"w:1": "cached", "w:2": "loaded w:2"}


async def test_warm_with_a_pattern_refreshes_the_existing_matching_keys(cache: Cache) -> None:
    await cache.mset({f"p:{i}": "old" for i in range(1200)} | {"q:1": "other"})
    seen: list[str] = []

    async def loader(keys: list[str]) -> dict[str, Any]:
        seen.extend(keys)
        return dict.fromkeys(keys, "new")

    assert await cache.warm("p:*", loader) == 1200
    assert sorted(seen) == sorted(f"p:{i}" for i in range(1200))
    assert set((await cache.mget([f"p:{i}" for i in range(1200)])).values()) == {"new"}
    assert await cache.get("q:1") == "other"


async def test_invalidate_pattern_removes_only_matching_keys_inside_the_namespace(
    cache: Cache, redis: Redis, prefix: str
) -> None:
    await cache.mset({f"user:{i}": i for i in range(300)} | {"keep:1": 1})
    await redis.set(f"{prefix}-outside:user:1", b"1")  # shares the prefix text, not the namespace
    assert await cache.invalidate_pattern("user:*") == 300
    assert await cache.mget([f"user:{i}" for i in range(300)]) == {}
    assert await cache.get("keep:1") == 1
    assert await redis.get(f"{prefix}-outside:user:1") == b"1"
    await redis.delete(f"{prefix}-outside:user:1")


async def test_pattern_invalidation_of_100000_keys_goes_in_bounded_scan_batches(
    redis: Redis, prefix: str, endpoints: Endpoints
) -> None:
    """100,000 keys, SCAN + UNLINK of 1,000 per round, with a PING probe measuring stalls."""
    cache = Cache(redis, prefix=prefix, jitter=0, scan_batch=1000)
    total = 100_000
    for start in range(0, total, 10_000):
        await cache.mset({f"bulk:{i}": {"i": i} for i in range(start, start + 10_000)})
    await cache.set("survivor", 1)
    batches: list[int] = []
    unlink = redis.unlink

    async def counting_unlink(*names: Any) -> Any:
        batches.append(len(names))
        return await unlink(*names)

    redis.unlink = counting_unlink  # type: ignore[method-assign]
    try:
        with PingProbe(endpoints.redis_url) as probe:  # its own process and connection
            started = time.perf_counter()
            removed = await cache.invalidate_pattern("bulk:*")
            elapsed = time.perf_counter() - started
    finally:
        redis.unlink = unlink  # type: ignore[method-assign]
    print(
        f"invalidated {removed} keys in {elapsed:.2f} s ({removed / elapsed:,.0f} keys/s), "
        f"{len(batches)} UNLINK rounds, largest {max(batches)}; {len(probe.samples)} pings, "
        f"longest {probe.longest_ms:.1f} ms"
    )
    assert removed == total
    assert await redis.exists(f"{prefix}:bulk:0", f"{prefix}:bulk:99999") == 0
    assert await cache.get("survivor") == 1
    # SCAN's COUNT is a hint per hash-table step: a round may return a little more, never all.
    assert len(batches) >= total // 2000
    assert max(batches) <= 2000
    assert len(probe.samples) > len(batches) // 4, "Redis answered no one between rounds"


async def test_a_bad_prefix_is_refused(redis: Redis) -> None:
    for bad in ("", "uait:*", "a[b]"):
        with pytest.raises(ValueError, match="prefix"):
            Cache(redis, prefix=bad)


async def test_an_unreachable_redis_raises_cache_unavailable(tmp_path: Any) -> None:
    client = Redis(unix_socket_path=str(tmp_path / "none.sock"), socket_connect_timeout=0.2)
    try:
        with pytest.raises(CacheUnavailableError):
            await Cache(client).get("x")
    finally:
        await client.aclose()


# --- cache-aside: single flight, stale values, dead lock holders ----------------------------


def replicas(endpoints: Endpoints, prefix: str, n: int, **options: Any) -> list[CacheAside]:
    """``n`` independent caches, each with its own Redis client, like ``n`` ingress processes."""
    out = []
    for _ in range(n):
        client = Redis.from_url(endpoints.redis_url, max_connections=50)
        out.append(CacheAside(Cache(client, prefix=prefix), "test.flight", **options))
    return out


async def close_all(caches: list[CacheAside]) -> None:
    for c in caches:
        await c.close()
        await c.cache.redis.aclose()


async def test_100_concurrent_misses_over_10_replicas_call_the_loader_once(
    endpoints: Endpoints, prefix: str
) -> None:
    caches = replicas(endpoints, prefix, 10, ttl_s=60, lock_timeout_s=5)
    loader = CountingLoader({"answer": 42}, delay_s=0.3)
    waits_before = sample("uait_cache_flight_waits_total", cache="test.flight", outcome="filled")
    try:
        answers = await asyncio.gather(*(caches[i % 10].fetch("hot", loader) for i in range(100)))
    finally:
        await close_all(caches)
    assert loader.calls == 1
    assert answers == [{"answer": 42}] * 100
    # Nine replicas waited for the one that loaded (the rest of each replica shared its lookup).
    filled = sample("uait_cache_flight_waits_total", cache="test.flight", outcome="filled")
    assert filled - waits_before == 9


async def test_a_stale_value_is_served_at_once_while_exactly_one_caller_reloads_it(
    endpoints: Endpoints, prefix: str
) -> None:
    caches = replicas(endpoints, prefix, 4, ttl_s=0.2, stale_s=10, lock_timeout_s=5)
    release = asyncio.Event()
    calls = 0

    async def loader() -> Any:
        nonlocal calls
        calls += 1
        if calls > 1:
            await release.wait()  # the reload finishes only when the test says so
        return {"call": calls}

    try:
        assert await caches[0].fetch("swr", loader) == {"call": 1}
        await asyncio.sleep(0.35)  # past the TTL (0.2 s ± 10 %), inside the stale window
        stale_before = sample("uait_cache_lookups_total", cache="test.flight", result="stale")
        # Answered while the reload is still held: nobody waits for it.
        answers = await asyncio.wait_for(
            asyncio.gather(*(caches[i % 4].fetch("swr", loader) for i in range(40))), 10
        )
        assert answers == [{"call": 1}] * 40
        stale = sample("uait_cache_lookups_total", cache="test.flight", result="stale")
        assert stale - stale_before == 4  # one Redis lookup per replica; the rest shared it
        assert calls == 2, "exactly one reload for 40 stale lookups over 4 replicas"
        release.set()
        for c in caches:
            await c.close()  # waits for the background reload
        assert calls == 2
        assert await caches[3].fetch("swr", loader) == {"call": 2}
    finally:
        release.set()
        await close_all(caches)


async def test_when_the_lock_holder_dies_its_lock_expires_and_a_waiter_loads_instead(
    endpoints: Endpoints, prefix: str, redis: Redis
) -> None:
    (cache,) = replicas(endpoints, prefix, 1, ttl_s=60, lock_timeout_s=0.5)
    # A holder that took the lock and died before writing a value.
    await redis.set(f"{prefix}:test.flight:orphan:lock", b"dead-holder", px=500)
    loader = CountingLoader({"v": "fresh"})
    took_over = sample("uait_cache_flight_waits_total", cache="test.flight", outcome="took_over")
    started = time.perf_counter()
    try:
        assert await cache.fetch("orphan", loader) == {"v": "fresh"}
    finally:
        waited = time.perf_counter() - started
        await close_all([cache])
    assert loader.calls == 1
    assert waited >= 0.3, "it did not wait for the lock"
    after = sample("uait_cache_flight_waits_total", cache="test.flight", outcome="took_over")
    assert after - took_over == 1
    assert await redis.get(f"{prefix}:test.flight:orphan:lock") is None, "the lock was released"


async def test_a_failing_loader_releases_its_lock_so_the_next_caller_loads_at_once(
    endpoints: Endpoints, prefix: str, redis: Redis
) -> None:
    (cache,) = replicas(endpoints, prefix, 1, ttl_s=60, lock_timeout_s=30)

    async def broken() -> Any:
        raise RuntimeError("database hiccup")

    try:
        with pytest.raises(RuntimeError, match="hiccup"):
            await cache.fetch("flaky", broken)
        assert await redis.exists(f"{prefix}:test.flight:flaky:lock") == 0
        assert await cache.fetch("flaky", CountingLoader({"ok": True})) == {"ok": True}
    finally:
        await close_all([cache])


async def test_a_lock_is_released_only_by_its_holder(
    endpoints: Endpoints, prefix: str, redis: Redis
) -> None:
    """A holder whose lock expired and was taken by another must not free the other's lock."""
    (cache,) = replicas(endpoints, prefix, 1, ttl_s=60, lock_timeout_s=0.2)
    lock = f"{prefix}:test.flight:slow:lock"

    async def slow_then_stolen() -> Any:
        await asyncio.sleep(0.3)  # our lock (0.2 s) has expired; another process takes it
        await redis.set(lock, b"other-holder", px=10_000)
        return "late"

    try:
        assert await cache.fetch("slow", slow_then_stolen) == "late"
    finally:
        await close_all([cache])
    assert await redis.get(lock) == b"other-holder"


async def test_bumping_the_generation_makes_the_next_lookup_load_again(
    endpoints: Endpoints, prefix: str, redis: Redis
) -> None:
    (cache,) = replicas(endpoints, prefix, 1, ttl_s=60)
    generations = f"{prefix}:gen:test"
    loader = CountingLoader()
    fetch: Callable[[], Awaitable[Any]] = lambda: cache.fetch(  # noqa: E731
        "doc", loader, generation=(generations, "17")
    )
    try:
        assert await fetch() == {"call": 1}
        assert await fetch() == {"call": 1}
        await redis.hincrby(generations, "42", 1)  # another bucket: no effect
        assert await fetch() == {"call": 1}
        await redis.hincrby(generations, "17", 1)
        assert await fetch() == {"call": 2}
        assert await redis.exists(f"{prefix}:test.flight:doc@0", f"{prefix}:test.flight:doc@1")
    finally:
        await close_all([cache])


async def test_with_redis_down_a_lookup_reads_through_the_loader_and_counts_an_error(
    tmp_path: Any,
) -> None:
    client = Redis(unix_socket_path=str(tmp_path / "none.sock"), socket_connect_timeout=0.2)
    cache = CacheAside(Cache(client, prefix="down"), "test.down", ttl_s=60)
    errors = sample("uait_cache_lookups_total", cache="test.down", result="error")
    loads = sample("uait_cache_loads_total", cache="test.down", result="ok")
    try:
        assert await cache.fetch("k", CountingLoader({"from": "postgres"})) == {"from": "postgres"}
    finally:
        await client.aclose()
    assert sample("uait_cache_lookups_total", cache="test.down", result="error") == errors + 1
    assert sample("uait_cache_loads_total", cache="test.down", result="ok") == loads + 1


async def test_a_cached_none_is_a_hit_not_a_miss(endpoints: Endpoints, prefix: str) -> None:
    (cache,) = replicas(endpoints, prefix, 1, ttl_s=60)
    hits = sample("uait_cache_lookups_total", cache="test.flight", result="hit")
    calls = 0

    async def nothing() -> Any:
        nonlocal calls
        calls += 1
        return None

    try:
        assert await cache.fetch("absent", nothing) is None
        assert await cache.fetch("absent", nothing) is None
    finally:
        await close_all([cache])
    assert calls == 1
    assert sample("uait_cache_lookups_total", cache="test.flight", result="hit") == hits + 1


async def test_with_redis_stopped_mid_test_a_cached_key_is_read_through_the_loader(
    tmp_path: Any,
) -> None:
    stack = EmbeddedStack(
        Settings(kafka_bootstrap="unused:1", database_url="unused", redis_url=""),
        data_dir=tmp_path / "stack",
    )
    client = Redis.from_url(stack.start().redis_url, socket_timeout=0.5)
    cache = CacheAside(Cache(client, prefix="stopped"), "test.stopped", ttl_s=60)
    loader = CountingLoader()
    try:
        assert await cache.fetch("k", loader) == {"call": 1}
        assert await cache.fetch("k", loader) == {"call": 1}  # a hit
        stack.stop()
        errors = sample("uait_cache_lookups_total", cache="test.stopped", result="error")
        assert await cache.fetch("k", loader) == {"call": 2}  # from the loader, no exception
    finally:
        stack.stop()
        await client.aclose()
    assert sample("uait_cache_lookups_total", cache="test.stopped", result="error") == errors + 1
