"""A breaker whose Redis is unreachable calls through (fail_open) or fails fast, and its config."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from infra.breakers import Breaker, BreakerConfig, BreakerOpenError, BreakerState
from infra.settings import Settings


async def answer() -> str:
    return "answer"


def unreachable() -> Redis:
    # Port 1 on loopback: the connection is refused at once.
    return Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)


async def test_with_redis_down_a_fail_open_breaker_still_makes_the_call() -> None:
    redis = unreachable()
    try:
        breaker = Breaker("unit.fail-open", redis, BreakerConfig(fail_open=True))
        assert await breaker.call(answer) == "answer"
    finally:
        await redis.aclose()


async def test_with_redis_down_a_fail_closed_breaker_fails_fast_or_falls_back() -> None:
    redis = unreachable()
    try:
        breaker = Breaker("unit.fail-closed", redis, BreakerConfig(fail_open=False))
        with pytest.raises(BreakerOpenError) as refused:
            await breaker.call(answer)
        assert refused.value.state is BreakerState.OPEN
        assert await breaker.call(answer, fallback=lambda exc: "fallback") == "fallback"
    finally:
        await redis.aclose()


def test_a_breaker_name_must_be_a_plain_identifier() -> None:
    with pytest.raises(ValueError, match="does not match"):
        Breaker("Not a name!", unreachable())


def test_the_settings_supply_the_defaults_and_a_breaker_may_override_them() -> None:
    settings = Settings(breaker_min_calls=7, breaker_open_wait_s=12.5)
    cfg = BreakerConfig.from_settings(settings, half_open_probes=1)
    assert (cfg.min_calls, cfg.open_wait_s, cfg.half_open_probes) == (7, 12.5, 1)
    assert cfg.window_size == settings.breaker_window_size


def test_the_gauge_codes_of_the_states() -> None:
    assert [s.code for s in BreakerState] == [0, 1, 2, 3, 4]
