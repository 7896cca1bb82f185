"""`uait breakers …` and the admin routes for breakers, against the session's real Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from types import SimpleNamespace
from typing import TYPE_CHECKING

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis.asyncio import Redis
from typer.testing import CliRunner

from app import problems
from app.auth.principal import Principal
from app.redis_client import create_redis
from app.routes import breakers as breaker_routes
from contexts import REGISTRY
from infra.breakers import Breaker, BreakerConfig, BreakerOpenError, BreakerState
from infra.settings import Settings
from uait.main import app as cli

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _keep_root_logging() -> Iterator[None]:
    """The commands set up logging on the root logger (onto CliRunner's stream): undo it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def unique() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"


async def _use(url: str, name: str) -> None:
    """One successful call, so the breaker exists (with its config) in Redis."""
    client = Redis.from_url(url)
    try:

        async def ok() -> str:
            return "ok"

        await Breaker(name, client, BreakerConfig(window_size=5)).call(ok)
    finally:
        await client.aclose()


async def _state(url: str, name: str) -> tuple[BreakerState, bool]:
    """The stored state, and whether a call is refused now."""
    client = Redis.from_url(url)
    try:
        breaker = Breaker(name, client, BreakerConfig(window_size=5))
        state = (await breaker.status()).state

        async def ok() -> str:
            return "ok"

        try:
            await breaker.call(ok)
        except BreakerOpenError:
            return state, True
        return state, False
    finally:
        await client.aclose()


def test_the_command_line_lists_opens_closes_and_resets_a_breaker(
    endpoints: Endpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique()
    asyncio.run(_use(endpoints.redis_url, name))
    monkeypatch.setenv("UAIT_REDIS_URL", endpoints.redis_url)
    runner = CliRunner()

    listed = runner.invoke(cli, ["breakers", "list"])
    assert listed.exit_code == 0, listed.output
    assert name in listed.output
    assert "closed" in listed.output

    opened = runner.invoke(cli, ["breakers", "open", name, "--reason", "backend upgrade"])
    assert opened.exit_code == 0, opened.output
    assert asyncio.run(_state(endpoints.redis_url, name)) == (BreakerState.FORCED_OPEN, True)

    closed = runner.invoke(cli, ["breakers", "close", name])
    assert closed.exit_code == 0, closed.output
    assert asyncio.run(_state(endpoints.redis_url, name)) == (BreakerState.FORCED_CLOSED, False)

    reset = runner.invoke(cli, ["breakers", "reset", name])
    assert reset.exit_code == 0, reset.output
    assert asyncio.run(_state(endpoints.redis_url, name)) == (BreakerState.CLOSED, False)

    unknown = runner.invoke(cli, ["breakers", "open", unique()])
    assert unknown.exit_code == 1
    assert "no breaker named" in unknown.output


def test_the_command_line_needs_uait_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UAIT_REDIS_URL", "")
    result = CliRunner().invoke(cli, ["breakers", "list"])
    assert result.exit_code == 2
    assert "UAIT_REDIS_URL is empty" in result.output


def _admin_app(redis_url: str) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.include_router(breaker_routes.router)
    settings = Settings(redis_url=redis_url)
    app.state.deps = SimpleNamespace(settings=settings, redis=create_redis(settings))
    # Authentication is tested in tests/security; here every caller is an admin.
    admin = Principal(
        user_id=str(uuid.uuid4()), kind="user", permissions=REGISTRY.access.permissions
    )

    class Admins:
        async def authenticate(self, request: object) -> Principal:
            return admin

    app.state.auth = SimpleNamespace(authenticator=Admins())
    return app


def test_the_admin_routes_list_and_steer_breakers(
    endpoints: Endpoints,
) -> None:
    name = unique()
    asyncio.run(_use(endpoints.redis_url, name))
    app = _admin_app(endpoints.redis_url)
    with TestClient(app) as client:
        listed = client.get("/v1/admin/breakers")
        assert listed.status_code == 200
        mine = [b for b in listed.json()["breakers"] if b["name"] == name]
        assert len(mine) == 1
        assert mine[0]["state"] == "closed"
        assert mine[0]["calls"] == 1
        assert mine[0]["config"]["window_size"] == 5

        opened = client.post(f"/v1/admin/breakers/{name}/open")
        assert opened.status_code == 200
        assert (opened.json()["state"], opened.json()["state_code"]) == ("forced_open", 3)
        assert asyncio.run(_state(endpoints.redis_url, name)) == (BreakerState.FORCED_OPEN, True)

        closed = client.post(f"/v1/admin/breakers/{name}/close")
        assert closed.json()["state"] == "forced_closed"

        reset = client.post(f"/v1/admin/breakers/{name}/reset")
        assert (reset.json()["state"], reset.json()["calls"]) == ("closed", 0)

        missing = client.post(f"/v1/admin/breakers/{unique()}/open")
        assert missing.status_code == 404
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert client.post("/v1/admin/breakers/Bad Name!/open").status_code == 422


def test_the_admin_routes_answer_503_without_redis() -> None:
    with TestClient(_admin_app("")) as client:
        answer = client.get("/v1/admin/breakers")
    assert answer.status_code == 503
    assert "UAIT_REDIS_URL" in answer.json()["detail"]
