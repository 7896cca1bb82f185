"""Circuit breakers against the session's real Redis and a real local HTTP server that fails,
hangs and recovers on demand."""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from redis.asyncio import BlockingConnectionPool, Redis

from infra.breakers import (
    Breaker,
    BreakerConfig,
    BreakerOpenError,
    BreakerRegistry,
    BreakerState,
)
from telemetry.metrics import REGISTRY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # 200 concurrent connects must not wait for SYN retries


class Backend:
    """A local HTTP server whose answers a test switches: ok, fail (500), hang; plus a delay."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.delay_s = 0.0
        self.hits = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with backend._lock:
                    backend.hits += 1
                    backend.in_flight += 1
                    backend.max_in_flight = max(backend.max_in_flight, backend.in_flight)
                    mode, delay = backend.mode, backend.delay_s
                try:
                    if mode == "hang":
                        backend.release.wait(30)
                    if delay:
                        time.sleep(delay)
                    body = b"boom" if mode == "fail" else b"pong"
                    self.send_response(500 if mode == "fail" else 200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                finally:
                    with backend._lock:
                        backend.in_flight -= 1

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis(endpoints: Endpoints) -> AsyncIterator[Redis]:
    pool = BlockingConnectionPool.from_url(endpoints.redis_url, max_connections=50, timeout=10)
    client = Redis(connection_pool=pool)
    try:
        yield client
    finally:
        await client.aclose(close_connection_pool=True)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=300, max_keepalive_connections=50)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        yield client


def config(**overrides: Any) -> BreakerConfig:
    base: dict[str, Any] = {
        "window_size": 10,
        "min_calls": 4,
        "failure_rate": 50.0,
        "slow_call_s": 1.0,
        "slow_call_rate": 50.0,
        "call_timeout_s": 2.0,
        "open_wait_s": 0.3,
        "half_open_probes": 2,
    }
    return BreakerConfig(**(base | overrides))


def unique() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


def sample(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


async def fetch(http: httpx.AsyncClient, backend: Backend) -> str:
    answer = await http.get(backend.url)
    answer.raise_for_status()
    return answer.text


async def open_it(breaker: Breaker, http: httpx.AsyncClient, backend: Backend) -> None:
    backend.mode = "fail"
    for _ in range(breaker.config.min_calls):
        with pytest.raises(httpx.HTTPStatusError):
            await breaker.call(fetch, http, backend)
    assert (await breaker.status()).state is BreakerState.OPEN


async def test_below_the_minimum_number_of_calls_even_all_failures_leave_it_closed(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    breaker = Breaker(unique(), redis, config(min_calls=5))
    backend.mode = "fail"
    for _ in range(4):
        with pytest.raises(httpx.HTTPStatusError):
            await breaker.call(fetch, http, backend)
    status = await breaker.status()
    assert (status.state, status.calls, status.failures) == (BreakerState.CLOSED, 4, 4)
    assert status.failure_rate == 100.0
    with pytest.raises(httpx.HTTPStatusError):
        await breaker.call(fetch, http, backend)
    assert (await breaker.status()).state is BreakerState.OPEN
    assert backend.hits == 5


async def test_the_failure_rate_opens_it_when_it_reaches_the_threshold_over_the_window(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    breaker = Breaker(unique(), redis, config(min_calls=4, failure_rate=50.0))
    for mode in ("ok", "ok", "ok", "fail", "fail"):
        backend.mode = mode
        with pytest.raises(httpx.HTTPStatusError) if mode == "fail" else _nothing():
            await breaker.call(fetch, http, backend)
    status = await breaker.status()
    assert status.state is BreakerState.CLOSED  # 2 of 5 failed: 40 %
    assert status.failure_rate == 40.0
    with pytest.raises(httpx.HTTPStatusError):
        await breaker.call(fetch, http, backend)  # 3 of 6: 50 %
    status = await breaker.status()
    assert status.state is BreakerState.OPEN
    assert status.calls == 0  # the window starts over with every change of state
    assert status.opened_at is not None
    assert status.half_open_at is not None


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_slow_calls_open_it_even_when_every_call_succeeds(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    name = unique()
    breaker = Breaker(name, redis, config(slow_call_s=0.1, slow_call_rate=50.0, min_calls=4))
    backend.delay_s = 0.15
    for _ in range(3):
        assert await breaker.call(fetch, http, backend) == "pong"
    assert (await breaker.status()).state is BreakerState.CLOSED
    assert await breaker.call(fetch, http, backend) == "pong"
    assert (await breaker.status()).state is BreakerState.OPEN
    assert sample("uait_breaker_calls_total", breaker=name, result="slow") == 4
    assert sample("uait_breaker_calls_total", breaker=name, result="failure") == 0


async def test_a_call_over_the_timeout_is_cut_and_counted_as_a_failure(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    name = unique()
    breaker = Breaker(name, redis, config(call_timeout_s=0.2, slow_call_s=5.0))
    backend.mode = "hang"
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await breaker.call(fetch, http, backend)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.8
    status = await breaker.status()
    assert (status.calls, status.failures, status.slow) == (1, 1, 0)
    assert sample("uait_breaker_calls_total", breaker=name, result="timeout") == 1


async def test_an_open_breaker_fails_fast_without_touching_the_server(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    name = unique()
    breaker = Breaker(name, redis, config(open_wait_s=60))
    backend.mode = "fail"
    for _ in range(3):
        with pytest.raises(httpx.HTTPStatusError):
            await breaker.call(fetch, http, backend)
    with pytest.raises(httpx.HTTPStatusError):
        await breaker.call(fetch, http, backend)  # this one opens it
    opened = time.monotonic()
    backend.mode = "hang"  # a call that got through would take 30 s
    hits = backend.hits
    latencies = []
    for _ in range(200):
        started = time.monotonic()
        with pytest.raises(BreakerOpenError) as refused:
            await breaker.call(fetch, http, backend)
        latencies.append(time.monotonic() - started)
    first_refusal = opened + latencies[0]
    assert backend.hits == hits
    assert refused.value.state is BreakerState.OPEN
    assert refused.value.retry_at is not None
    p50 = statistics.median(latencies)
    p99 = statistics.quantiles(latencies, n=100)[98]
    print(
        f"\nopen -> first caller refused: {(first_refusal - opened) * 1000:.2f} ms; "
        f"refusal p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, max {max(latencies) * 1000:.2f}"
    )
    assert p50 < 0.01
    assert max(latencies) < 0.25
    assert sample("uait_breaker_calls_total", breaker=name, result="rejected") == 200
    assert sample("uait_breaker_state", breaker=name) == 1


async def test_after_the_wait_half_open_admits_only_the_permitted_probes_at_a_time(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    name = unique()
    breaker = Breaker(name, redis, config(half_open_probes=2, open_wait_s=0.3))
    await open_it(breaker, http, backend)
    with pytest.raises(BreakerOpenError):
        await breaker.call(fetch, http, backend)  # still within the wait
    await asyncio.sleep(0.35)
    backend.mode, backend.delay_s = "ok", 0.3
    hits = backend.hits
    results = await asyncio.gather(
        *(breaker.call(fetch, http, backend) for _ in range(10)), return_exceptions=True
    )
    admitted = [r for r in results if r == "pong"]
    refused = [r for r in results if isinstance(r, BreakerOpenError)]
    assert len(admitted) == 2
    assert len(refused) == 8
    assert all(r.state is BreakerState.HALF_OPEN for r in refused)
    assert backend.hits - hits == 2
    assert backend.max_in_flight <= 2
    assert (await breaker.status()).state is BreakerState.CLOSED  # both probes succeeded
    backend.delay_s = 0
    assert await breaker.call(fetch, http, backend) == "pong"
    assert sample("uait_breaker_transitions_total", breaker=name, to="half_open") == 1
    assert sample("uait_breaker_transitions_total", breaker=name, to="closed") == 1


async def test_a_failed_probe_opens_it_again(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    name = unique()
    breaker = Breaker(name, redis, config(open_wait_s=0.2))
    await open_it(breaker, http, backend)
    await asyncio.sleep(0.25)
    with pytest.raises(httpx.HTTPStatusError):
        await breaker.call(fetch, http, backend)  # the probe, and the server still fails
    assert (await breaker.status()).state is BreakerState.OPEN
    hits = backend.hits
    with pytest.raises(BreakerOpenError):
        await breaker.call(fetch, http, backend)
    assert backend.hits == hits
    assert sample("uait_breaker_transitions_total", breaker=name, to="open") == 2


async def test_a_cancelled_probe_gives_its_slot_back(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    breaker = Breaker(unique(), redis, config(open_wait_s=0.2, half_open_probes=1))
    await open_it(breaker, http, backend)
    await asyncio.sleep(0.25)
    backend.mode = "hang"
    probe = asyncio.create_task(breaker.call(fetch, http, backend))
    await asyncio.sleep(0.1)
    assert (await breaker.status()).probes_in_flight == 1
    with pytest.raises(BreakerOpenError):
        await breaker.call(fetch, http, backend)  # the only slot is taken
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    status = await breaker.status()
    assert (status.state, status.probes_in_flight) == (BreakerState.HALF_OPEN, 0)
    backend.mode = "ok"
    backend.release.set()
    assert await breaker.call(fetch, http, backend) == "pong"
    assert (await breaker.status()).state is BreakerState.CLOSED


async def test_the_fallback_answers_when_the_call_fails_and_while_the_breaker_is_open(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    seen: list[type[BaseException]] = []

    async def cached(exc: Exception) -> str:
        seen.append(type(exc))
        return "cached"

    breaker = Breaker(unique(), redis, config(open_wait_s=60), fallback=cached)
    backend.mode = "fail"
    for _ in range(4):
        assert await breaker.call(fetch, http, backend) == "cached"
    assert (await breaker.status()).state is BreakerState.OPEN
    hits = backend.hits
    assert await breaker.call(fetch, http, backend) == "cached"
    assert await breaker.call(fetch, http, backend, fallback=lambda exc: "per call") == "per call"
    assert backend.hits == hits
    assert seen == [httpx.HTTPStatusError] * 4 + [BreakerOpenError]


async def test_forced_open_and_forced_closed_stick_until_a_reset(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    name = unique()
    breaker = Breaker(name, redis, config(open_wait_s=0.1))
    assert await breaker.call(fetch, http, backend) == "pong"

    status = await breaker.force_open("maintenance")
    assert status.state is BreakerState.FORCED_OPEN
    await asyncio.sleep(0.15)  # longer than the wait: a forced open never goes half-open
    with pytest.raises(BreakerOpenError) as refused:
        await breaker.call(fetch, http, backend)
    assert refused.value.state is BreakerState.FORCED_OPEN
    assert sample("uait_breaker_state", breaker=name) == 3

    assert (await breaker.force_close()).state is BreakerState.FORCED_CLOSED
    backend.mode = "fail"
    for _ in range(8):
        with pytest.raises(httpx.HTTPStatusError):
            await breaker.call(fetch, http, backend)
    status = await breaker.status()
    assert (status.state, status.failures) == (BreakerState.FORCED_CLOSED, 8)

    status = await breaker.reset()
    assert (status.state, status.calls) == (BreakerState.CLOSED, 0)
    await open_it(breaker, http, backend)  # and the rules apply again


async def test_state_is_shared_with_a_second_process(
    redis: Redis, endpoints: Endpoints, http: httpx.AsyncClient, backend: Backend
) -> None:
    name = unique()
    breaker = Breaker(name, redis, config(open_wait_s=60))
    assert await breaker.call(fetch, http, backend) == "pong"
    backend.mode = "fail"
    spec = config(open_wait_s=60).model_dump()
    script = textwrap.dedent(
        f"""
        import asyncio, time
        import httpx
        from redis.asyncio import Redis
        from infra.breakers import Breaker, BreakerConfig

        async def main():
            redis = Redis.from_url({endpoints.redis_url!r})
            breaker = Breaker({name!r}, redis, BreakerConfig(**{spec!r}))
            async with httpx.AsyncClient() as http:
                async def fetch():
                    (await http.get({backend.url!r})).raise_for_status()
                for _ in range(5):
                    try:
                        await breaker.call(fetch)
                    except httpx.HTTPStatusError:
                        pass
                    if (await breaker.status()).state.value == "open":
                        print(time.time(), flush=True)
                        break
            await redis.aclose()

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, env=env, cwd=ROOT, stdout=subprocess.PIPE
    )
    seen_open_at = 0.0
    while seen_open_at == 0.0:  # watch (read-only) while the other process fails its calls
        if (await breaker.status()).state is BreakerState.OPEN:
            seen_open_at = time.time()
        elif child.returncode is not None:
            break
        await asyncio.sleep(0.001)
    out, _ = await child.communicate()
    assert child.returncode == 0
    opened_at = float(out.decode().split()[0])
    print(
        f"\nopened in another process, seen here {(seen_open_at - opened_at) * 1000:.1f} ms later"
    )
    hits = backend.hits
    assert hits == 4  # ours, then the 3 failures that opened it (3 of 4 calls: 75 %)
    with pytest.raises(BreakerOpenError):
        await breaker.call(fetch, http, backend)
    assert backend.hits == hits
    # The other process made the transition, so this one counted none.
    assert sample("uait_breaker_transitions_total", breaker=name, to="open") == 0


async def test_two_hundred_concurrent_failures_open_it_exactly_once(
    redis: Redis, http: httpx.AsyncClient, backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    name = unique()
    breaker = Breaker(
        name, redis, config(window_size=50, min_calls=20, open_wait_s=60, call_timeout_s=20)
    )
    backend.mode = "fail"
    with caplog.at_level(logging.INFO, logger="uait.breaker"):
        results = await asyncio.gather(
            *(breaker.call(fetch, http, backend) for _ in range(200)), return_exceptions=True
        )
    assert {type(r) for r in results} <= {httpx.HTTPStatusError, BreakerOpenError}
    assert sample("uait_breaker_transitions_total", breaker=name, to="open") == 1
    changes = [r for r in caplog.records if r.getMessage().startswith("breaker state changed")]
    assert len(changes) == 1
    event = changes[0].breaker_event
    assert (event["breaker"], event["from"], event["to"]) == (name, "closed", "open")
    assert event["reason"].startswith("failure rate 100.0% >= 50.0% over the last 20 calls")
    assert (await breaker.status()).state is BreakerState.OPEN


async def test_the_script_is_loaded_again_after_redis_forgets_it(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    breaker = Breaker(unique(), redis, config())
    assert await breaker.call(fetch, http, backend) == "pong"
    await redis.script_flush()
    assert await breaker.call(fetch, http, backend) == "pong"
    assert (await breaker.status()).calls == 2


async def test_the_registry_lists_every_breaker_with_the_config_it_was_used_with(
    redis: Redis, http: httpx.AsyncClient, backend: Backend
) -> None:
    first, second = unique(), unique()
    await Breaker(first, redis, config(window_size=7)).call(fetch, http, backend)
    await Breaker(second, redis, config()).force_open()
    registry = BreakerRegistry(redis)
    names = await registry.names()
    assert {first, second} <= set(names)
    statuses = {s.name: s for s in await registry.statuses()}
    assert statuses[first].config is not None
    assert statuses[first].config["window_size"] == 7
    assert statuses[first].calls == 1
    assert statuses[second].state is BreakerState.FORCED_OPEN
    assert (await registry.get(first)).config.window_size == 7
    assert not await registry.exists(unique())
