"""Connection-pool metrics, read from the live pools at scrape time.

A custom collector instead of gauges set now and then: every scrape sees the pool as it is, and
since each process serves its own registry, each ingress replica reports its own pools (tell them
apart by Prometheus' ``instance`` label; ``sum by (pool)`` gives the fleet).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric


class PostgresPool(Protocol):
    """What psycopg_pool's pools offer (``get_stats`` never resets the counters)."""

    def get_stats(self) -> dict[str, int]: ...


class RedisPool(Protocol):
    """What redis-py's connection pools offer."""

    max_connections: int

    def get_connection_count(self) -> list[tuple[int, dict[str, Any]]]: ...


# psycopg_pool counter -> (metric, help, scale)
_PG_COUNTERS = {
    "requests_num": (
        "uait_db_pool_requests",
        "Connections asked of the PostgreSQL pool.",
        1.0,
    ),
    "requests_queued": (
        "uait_db_pool_requests_queued",
        "Requests that had to wait for a PostgreSQL connection.",
        1.0,
    ),
    "requests_errors": (
        "uait_db_pool_request_errors",
        "Requests for a PostgreSQL connection that failed: a timeout, or too many waiting.",
        1.0,
    ),
    "requests_wait_ms": (
        "uait_db_pool_wait_seconds",
        "Time spent waiting for a PostgreSQL connection.",
        0.001,
    ),
    "connections_errors": (
        "uait_db_pool_connect_errors",
        "Failed attempts of the PostgreSQL pool to open a connection.",
        1.0,
    ),
    "connections_lost": (
        "uait_db_pool_connections_lost",
        "PostgreSQL connections found broken (on checkout or return) and discarded.",
        1.0,
    ),
}


class PoolCollector:
    """The pools this process registered, by name; registered once in ``REGISTRY``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._postgres: dict[str, PostgresPool] = {}
        self._redis: dict[str, RedisPool] = {}

    def watch_postgres(self, name: str, pool: PostgresPool) -> None:
        with self._lock:
            self._postgres[name] = pool

    def watch_redis(self, name: str, pool: RedisPool) -> None:
        with self._lock:
            self._redis[name] = pool

    def forget(self, name: str) -> None:
        with self._lock:
            self._postgres.pop(name, None)
            self._redis.pop(name, None)

    def describe(self) -> Iterator[Metric]:
        return self._families({}, {})

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            postgres, redis = dict(self._postgres), dict(self._redis)
        return self._families(postgres, redis)

    def _families(
        self, postgres: dict[str, PostgresPool], redis: dict[str, RedisPool]
    ) -> Iterator[Metric]:
        connections = GaugeMetricFamily(
            "uait_db_pool_connections",
            "Connections of the PostgreSQL pool by state (idle, in_use).",
            labels=["pool", "state"],
        )
        limit = GaugeMetricFamily(
            "uait_db_pool_max_connections",
            "The most connections the PostgreSQL pool may open.",
            labels=["pool"],
        )
        waiting = GaugeMetricFamily(
            "uait_db_pool_requests_waiting",
            "Requests waiting now for a PostgreSQL connection.",
            labels=["pool"],
        )
        counters = {
            stat: CounterMetricFamily(name, doc, labels=["pool"])
            for stat, (name, doc, _) in _PG_COUNTERS.items()
        }
        for name, pool in sorted(postgres.items()):
            stats = pool.get_stats()
            size, idle = stats.get("pool_size", 0), stats.get("pool_available", 0)
            connections.add_metric([name, "idle"], idle)
            connections.add_metric([name, "in_use"], max(size - idle, 0))
            limit.add_metric([name], stats.get("pool_max", 0))
            waiting.add_metric([name], stats.get("requests_waiting", 0))
            for stat, family in counters.items():
                family.add_metric([name], stats.get(stat, 0) * _PG_COUNTERS[stat][2])
        redis_connections = GaugeMetricFamily(
            "uait_redis_pool_connections",
            "Connections of the redis-py pool by state (idle, in_use).",
            labels=["pool", "state"],
        )
        redis_limit = GaugeMetricFamily(
            "uait_redis_pool_max_connections",
            "The most connections the redis-py pool may open.",
            labels=["pool"],
        )
        for name, rpool in sorted(redis.items()):
            idle, in_use = (count for count, _ in rpool.get_connection_count())
            redis_connections.add_metric([name, "idle"], idle)
            redis_connections.add_metric([name, "in_use"], in_use)
            redis_limit.add_metric([name], rpool.max_connections)
        yield from (connections, limit, waiting, *counters.values())
        yield from (redis_connections, redis_limit)
