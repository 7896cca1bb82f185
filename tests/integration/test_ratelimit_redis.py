"""The GCRA Lua script and the idempotency store against the session's real Redis."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from app.idempotency import IdempotencyStore
from app.ratelimit import Limit, RateLimiter
from infra.policies import RateLimitPolicy

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis(endpoints: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(endpoints.redis_url, max_connections=100)
    try:
        yield client
    finally:
        await client.aclose()


def limit(policy: str, n: int, period_s: float, cost: int = 1) -> Limit:
    spec = RateLimitPolicy(limit=n, period_s=period_s, cost=cost)
    return Limit(policy, spec, "ip", f"test-{uuid.uuid4().hex}")


async def test_fifty_concurrent_calls_on_a_limit_of_ten_allow_exactly_ten(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    stack = [limit("knowledge", 10, 3600)]
    decisions = await asyncio.gather(*(limiter.check(stack) for _ in range(50)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 10
    assert sorted(d.states[0].remaining for d in allowed) == list(range(10))
    assert all(d.states[0].remaining == 0 for d in decisions if not d.allowed)


async def test_a_request_refused_by_one_limit_consumes_nothing_of_the_other(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    tight, loose = limit("knowledge", 2, 3600), limit("default", 100, 3600)
    results = [(await limiter.check([tight, loose])).allowed for _ in range(5)]
    assert results == [True, True, False, False, False]
    alone = await limiter.check([loose])
    assert alone.allowed
    assert alone.states[0].remaining == 100 - 3  # two stacked requests and this one


async def test_retry_after_is_when_the_next_unit_frees_up_and_then_it_is_allowed(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    stack = [limit("default", 2, 2.0)]  # one unit per second
    assert (await limiter.check(stack)).allowed
    assert (await limiter.check(stack)).allowed
    refused = await limiter.check(stack)
    assert not refused.allowed
    assert 900_000 < refused.states[0].retry_us <= 1_000_000
    assert refused.retry_after_s == 1
    await asyncio.sleep(refused.states[0].retry_us / 1_000_000 + 0.02)
    assert (await limiter.check(stack)).allowed


async def test_a_cost_takes_that_many_units(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    stack = [limit("knowledge", 10, 3600, cost=4)]
    outcomes = [await limiter.check(stack) for _ in range(3)]
    assert [d.allowed for d in outcomes] == [True, True, False]
    assert [d.states[0].remaining for d in outcomes] == [6, 2, 2]


async def test_keys_expire_when_the_bucket_would_be_full_again(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    stack = [limit("default", 10, 3.0)]
    decision = await limiter.check(stack)
    ttl_ms = await redis.pttl(stack[0].key)
    assert 0 < ttl_ms <= 300  # one request of ten in 3 s: full again after 0.3 s
    assert 0 < decision.states[0].reset_us <= 300_000
    await asyncio.sleep(0.4)
    assert await redis.exists(stack[0].key) == 0


async def test_the_script_is_reloaded_after_a_script_flush(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    stack = [limit("default", 5, 3600)]
    assert (await limiter.check(stack)).allowed
    await redis.script_flush()
    decision = await limiter.check(stack)
    assert decision.allowed
    assert decision.states[0].remaining == 3


async def test_one_check_takes_one_round_trip_of_about_a_millisecond(redis: Redis) -> None:
    limiter = RateLimiter(redis)
    stack = [limit("knowledge", 1_000_000, 3600), limit("default", 1_000_000, 3600)]
    await limiter.check(stack)
    timings = []
    for _ in range(300):
        started = time.perf_counter()
        await limiter.check(stack)
        timings.append(time.perf_counter() - started)
    median = statistics.median(timings)
    print(
        f"rate-limit check, 2 stacked limits: median {median * 1e3:.3f} ms, "
        f"p99 {sorted(timings)[296] * 1e3:.3f} ms"
    )
    assert median < 0.01


async def test_an_idempotency_key_is_reserved_once_then_completed_or_released(
    redis: Redis,
) -> None:
    store = IdempotencyStore(redis, ttl_s=60, in_flight_s=5)
    key = f"idem:test:{uuid.uuid4().hex}"
    results = await asyncio.gather(*(store.reserve(key, "fp") for _ in range(20)))
    tokens = [token for token, _ in results if token]
    assert len(tokens) == 1
    assert all(
        existing == {"token": tokens[0], "fp": "fp", "state": "in_flight"}
        for token, existing in results
        if not token
    )
    assert 0 < await redis.pttl(key) <= 5000

    await store.release(key, "someone-else")  # not its reservation: no effect
    assert await redis.exists(key) == 1
    await store.complete(key, tokens[0], "fp", {"status": 202, "headers": [], "body": ""})
    _, existing = await store.reserve(key, "fp")
    assert existing is not None
    assert existing["state"] == "done"
    assert existing["status"] == 202
    assert 55_000 < await redis.pttl(key) <= 60_000

    other = f"idem:test:{uuid.uuid4().hex}"
    token, _ = await store.reserve(other, "fp")
    assert token is not None
    await store.release(other, token)
    assert await redis.exists(other) == 0


async def test_requests_sharing_one_script_call_are_decided_in_order_each_on_its_own_stack(
    redis: Redis,
) -> None:
    limiter = RateLimiter(redis)
    a, b, shared = (
        limit("knowledge", 3, 3600),
        limit("knowledge", 5, 3600),
        limit("default", 6, 3600),
    )
    stacks = [[a, shared], [b, shared]] * 6  # concurrent: they go to Redis as one batch
    decisions = await asyncio.gather(*(limiter.check(stack) for stack in stacks))
    # a fits 3, the shared limit 6: the seventh (a's fourth) is refused by a alone and takes
    # nothing of the shared limit, which the sixth request already filled.
    assert [d.allowed for d in decisions] == [True] * 6 + [False] * 6
    assert decisions[6].states[0].retry_us > 0
    assert decisions[6].states[1].remaining == 0
    assert not (await limiter.check([shared])).allowed
    assert (await limiter.check([b])).states[0].remaining == 5 - 3 - 1
