"""The ingress's readiness and health: PostgreSQL, Kafka, Redis, and projection lag.

Computed at most once a second however often it is asked. Projection lag only warns: a rebuild
or a slow projection must never take the ingress out of the load balancer.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from telemetry.health import CheckResult, health_document

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from app.deps import Deps

LAG_WARN_EVENTS = 10_000


async def _timed(probe: Callable[[], Awaitable[str | None]]) -> CheckResult:
    started = time.perf_counter()
    try:
        warning = await asyncio.wait_for(probe(), 1.0)
    except Exception as exc:
        return CheckResult("fail", f"{type(exc).__name__}: {exc}"[:300])
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    return CheckResult("warn" if warning else "pass", warning or "", elapsed)


class IngressHealth:
    def __init__(self, d: Deps) -> None:
        self.d = d
        self._lock = asyncio.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def report(self) -> dict[str, Any]:
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= 1.0:
                self._cached = (now, await self._compute())
            return self._cached[1]

    async def _compute(self) -> dict[str, Any]:
        d = self.d
        probes: dict[str, Callable[[], Awaitable[str | None]]] = {
            "postgres": self._postgres,
            "kafka": self._kafka,
            "projections": self._projections,
        }
        if d.redis is not None:
            probes["redis"] = self._redis
        names = list(probes)
        results = await asyncio.gather(*(_timed(probes[n]) for n in names))
        return health_document("uait-ingress", dict(zip(names, results, strict=True)))

    async def _postgres(self) -> None:
        async with self.d.queries.pool.connection(timeout=1.0) as conn:
            await conn.execute("SELECT 1")

    async def _kafka(self) -> None:
        await self.d.publisher.start()

    async def _redis(self) -> None:
        assert self.d.redis is not None
        await self.d.redis.ping()

    async def _projections(self) -> str | None:
        behind = []
        heads: dict[str, int] = {}
        for p in self.d.contexts.projections():
            if p.context not in heads:
                heads[p.context] = await self.d.queries.head(p.context)
            lag = heads[p.context] - self.d.watcher.positions.get(p.name, 0)
            if lag > LAG_WARN_EVENTS:
                behind.append(f"{p.name} is {lag} events behind")
        return "; ".join(behind) or None
