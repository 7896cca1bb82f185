"""The health checks of each process kind, served with its metrics (``telemetry.health``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import psycopg

from telemetry.health import CheckResult, Health, serve_ops, timed

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from infra.settings import Settings

log = logging.getLogger("uait")

LAG_WARN_EVENTS = 10_000


def postgres(url: str) -> Callable[[], CheckResult]:
    def probe() -> None:
        with psycopg.connect(url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")

    return lambda: timed(probe)


def redis(url: str) -> Callable[[], CheckResult]:
    def probe() -> None:
        from redis import Redis

        client = Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()

    return lambda: timed(probe)


def kafka_assignment(subscribers: Callable[[], list[Any]]) -> Callable[[], CheckResult]:
    """Warn until the consumer group has given this worker partitions (it may be rebalancing)."""

    def probe() -> str | None:
        consumers = [s.consumer for s in subscribers() if getattr(s, "consumer", None)]
        if not consumers:
            return "not connected to Kafka yet"
        if not any(c.assignment() for c in consumers):
            return "no partitions assigned (another member holds them, or a rebalance)"
        return None

    return lambda: timed(probe)


def projections_lag(url: str, contexts: Sequence[str]) -> Callable[[], CheckResult]:
    """Warn for a projection that is failed, paused or far behind; it never fails readiness."""

    def probe() -> str | None:
        problems = []
        with psycopg.connect(url, connect_timeout=2) as conn:
            for context in contexts:
                row = conn.execute(
                    f'SELECT coalesce(max(notification_id), 0) FROM "{context}_events"'
                ).fetchone()
                head = int(row[0]) if row else 0
                for name, position in conn.execute(
                    f'SELECT application_name, notification_id FROM "{context}_tracking"'
                    " WHERE position('@' in application_name) = 0"
                    " AND application_name <> '__migration__'"
                ).fetchall():
                    if head - position > LAG_WARN_EVENTS:
                        problems.append(f"{name} is {head - position} events behind")
            for name, state in conn.execute(
                "SELECT name, state FROM projection_state WHERE state <> 'running'"
            ).fetchall():
                problems.append(f"{name} is {state}")
        return "; ".join(problems) or None

    return lambda: timed(probe)


def start(settings: Settings, port: int, service: str, checks: dict[str, Any]) -> None:
    if not port:
        return
    serve_ops(settings.http_host, port, Health(service, checks))
    log.info(
        "ops endpoints on http://%s:%d (/metrics /livez /readyz /health)", settings.http_host, port
    )


def common_checks(settings: Settings) -> dict[str, Callable[[], CheckResult]]:
    checks = {"postgres": postgres(settings.database_url)}
    if settings.redis_url:
        checks["redis"] = redis(settings.redis_url)
    return checks
