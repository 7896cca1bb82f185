"""Pool metrics read at scrape time from real psycopg_pool and redis-py pools."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.asyncio import BlockingConnectionPool, Redis

from telemetry.pools import PoolCollector

if TYPE_CHECKING:
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


def scrape(collector: PoolCollector) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


async def test_a_busy_postgres_pool_shows_connections_in_use_waiting_requests_and_timeouts(
    endpoints: Endpoints,
) -> None:
    collector = PoolCollector()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        endpoints.database_url, min_size=2, max_size=2, timeout=0.3, open=False
    )
    await pool.open(wait=True)
    name = f"test-{uuid.uuid4().hex[:6]}"
    collector.watch_postgres(name, pool)
    try:
        async with pool.connection(), pool.connection():
            waiter = asyncio.create_task(pool.getconn(timeout=5))
            await asyncio.sleep(0.1)
            busy = scrape(collector)
            with pytest.raises(PoolTimeout):
                await pool.getconn(timeout=0.2)
            timed_out = scrape(collector)
        await pool.putconn(await waiter)
        idle = scrape(collector)
    finally:
        collector.forget(name)
        await pool.close()
    assert value(busy, "uait_db_pool_connections", pool=name, state="in_use") == 2
    assert value(busy, "uait_db_pool_connections", pool=name, state="idle") == 0
    assert value(busy, "uait_db_pool_max_connections", pool=name) == 2
    assert value(busy, "uait_db_pool_requests_waiting", pool=name) == 1
    assert value(timed_out, "uait_db_pool_request_errors_total", pool=name) == 1
    assert value(timed_out, "uait_db_pool_requests_queued_total", pool=name) == 2
    assert value(idle, "uait_db_pool_requests_waiting", pool=name) == 0
    assert value(idle, "uait_db_pool_connections", pool=name, state="in_use") == 0
    assert value(idle, "uait_db_pool_requests_total", pool=name) >= 4
    assert value(idle, "uait_db_pool_wait_seconds_total", pool=name) > 0.1
    assert scrape(collector) == {}, "a forgotten pool still reported"


async def test_a_redis_pool_shows_its_connections_by_state(endpoints: Endpoints) -> None:
    collector = PoolCollector()
    pool = BlockingConnectionPool.from_url(endpoints.redis_url, max_connections=7, timeout=1)
    client = Redis(connection_pool=pool)
    collector.watch_redis("r", pool)
    try:
        await asyncio.gather(*(client.ping() for _ in range(3)))
        held = await pool.get_connection()
        samples = scrape(collector)
        await pool.release(held)
        after = scrape(collector)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose(close_connection_pool=True)
    assert value(samples, "uait_redis_pool_max_connections", pool="r") == 7
    assert value(samples, "uait_redis_pool_connections", pool="r", state="in_use") == 1
    created = value(samples, "uait_redis_pool_connections", pool="r", state="idle") + 1
    assert 1 <= created <= 3
    assert value(after, "uait_redis_pool_connections", pool="r", state="in_use") == 0
