"""Pattern invalidation of 100,000 cache keys: SCAN + UNLINK in batches against KEYS + UNLINK.

Run: ``uv run --frozen python -m bench.cache [--keys N] [--batch B] [--runs R]``. Uses the Redis
of ``UAIT_REDIS_URL``, or starts the embedded one. Each run fills N keys, then removes them with
``Cache.invalidate_pattern`` (one ``SCAN COUNT B`` and one ``UNLINK`` per round) while a thread
with its own connection sends PING after PING; the longest PING is the longest time Redis kept
other clients waiting. The baseline removes the same keys with ``KEYS`` and one ``UNLINK``, the
approach the cache never uses. Prints the medians and, last, one summary line.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.asyncio import Redis

from app.cache import Cache
from infra.settings import Settings
from infra.stack import EmbeddedStack

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


def _ping_loop(url: str, ready: Any, stop: Any, results: Any) -> None:
    client = redis.Redis.from_url(url)
    client.ping()  # connected before the measurement starts
    ready.set()
    samples = []
    while not stop.is_set():
        started = time.perf_counter()
        client.ping()
        samples.append(time.perf_counter() - started)
        time.sleep(0.0005)
    results.send(samples)
    client.close()


class PingProbe:
    """PING in a loop in a process of its own (no GIL shared with the measured code)."""

    def __init__(self, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._results, sender = ctx.Pipe(duplex=False)
        self._process = ctx.Process(
            target=_ping_loop, args=(url, self._ready, self._stop, sender), daemon=True
        )
        self.samples: list[float] = []

    def __enter__(self) -> PingProbe:
        self._process.start()
        if not self._ready.wait(30):
            raise RuntimeError("the PING probe did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.samples = self._results.recv()
        self._process.join()

    @property
    def longest_ms(self) -> float:
        return max(self.samples) * 1000 if self.samples else 0.0


async def fill(cache: Cache, keys: int) -> None:
    for start in range(0, keys, 10_000):
        await cache.mset(
            {f"bench:{i}": {"i": i, "title": f"Document {i}"} for i in range(start, start + 10_000)}
        )


async def keys_then_unlink(client: Redis, prefix: str) -> int:
    """The baseline: one KEYS over the whole keyspace, one UNLINK of everything it found."""
    found = await client.keys(f"{prefix}:bench:*")
    return int(await client.unlink(*found)) if found else 0


async def measure(
    url: str, remove: Callable[[], Awaitable[int]], cache: Cache, keys: int
) -> tuple[float, float]:
    """(keys/s, longest stall in ms) of one removal of ``keys`` freshly written keys."""
    await fill(cache, keys)
    with PingProbe(url) as probe:
        started = time.perf_counter()
        removed = await remove()
        elapsed = time.perf_counter() - started
    if removed != keys:
        raise RuntimeError(f"removed {removed} keys, expected {keys}")
    return removed / elapsed, probe.longest_ms


async def run(url: str, keys: int, batch: int, runs: int) -> None:
    client = Redis.from_url(url)
    prefix = f"bench-{time.time_ns()}"
    cache = Cache(client, prefix=prefix, jitter=0, scan_batch=batch)
    scan_rates, scan_stalls, base_rates, base_stalls, idle = [], [], [], [], []
    try:
        for i in range(runs):
            with PingProbe(url) as probe:  # the noise floor: PINGs while nothing else runs
                await asyncio.sleep(0.8)
            idle.append(probe.longest_ms)
            rate, stall = await measure(
                url, lambda: cache.invalidate_pattern("bench:*"), cache, keys
            )
            scan_rates.append(rate)
            scan_stalls.append(stall)
            b_rate, b_stall = await measure(
                url, lambda: keys_then_unlink(client, prefix), cache, keys
            )
            base_rates.append(b_rate)
            base_stalls.append(b_stall)
            print(
                f"run {i + 1}: SCAN+UNLINK {rate:,.0f} keys/s, longest stall {stall:.1f} ms; "
                f"KEYS+UNLINK {b_rate:,.0f} keys/s, longest stall {b_stall:.1f} ms; "
                f"idle {idle[-1]:.1f} ms"
            )
    finally:
        await client.aclose()
    rate, stall = statistics.median(scan_rates), statistics.median(scan_stalls)
    b_rate, b_stall = statistics.median(base_rates), statistics.median(base_stalls)
    print(f"medians of {runs} runs, {keys:,} keys, SCAN COUNT {batch}:")
    print(f"  SCAN+UNLINK in batches  {rate:>10,.0f} keys/s   longest stall {stall:7.1f} ms")
    print(f"  KEYS+UNLINK (baseline)  {b_rate:>10,.0f} keys/s   longest stall {b_stall:7.1f} ms")
    floor = statistics.median(idle)
    print(f"  idle (noise floor)                         longest PING  {floor:7.1f} ms")
    print(
        f"cache: invalidated {keys} keys at {rate:.0f} keys/s, longest stall {stall:.1f} ms "
        f"(KEYS+UNLINK {b_stall:.1f} ms), stall ratio {b_stall / stall:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="SCAN COUNT / UNLINK size")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    settings = Settings()
    if settings.redis_url:
        asyncio.run(run(settings.redis_url, args.keys, args.batch, args.runs))
        return
    with tempfile.TemporaryDirectory(prefix="uait-bench-cache-") as tmp:
        stack = EmbeddedStack(
            Settings(kafka_bootstrap="unused:1", database_url="unused", redis_url=""),
            data_dir=Path(tmp),
        )
        with stack as endpoints:
            asyncio.run(run(endpoints.redis_url, args.keys, args.batch, args.runs))


if __name__ == "__main__":
    main()
