"""Lanes answer exactly as the API routes they serve, and refuse endpoints they cannot serve."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from app import problems
from app.auth.principal import Principal, require, unauthorized
from app.deps import Deps, deps
from app.knowledge import routes as knowledge
from app.lanes import _roles, install_lanes, lane
from app.main import create_app
from contexts import REGISTRY
from infra.settings import Settings


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Annotated[str, Field(min_length=1, max_length=20)]
    tags: list[str] = []


Writer = Annotated[Principal, Depends(require("knowledge:write"))]


async def endpoint(body: Body, request: Request, d: Annotated[Deps, Depends(deps)], who: Writer):
    return JSONResponse(
        {"title": body.title, "tags": body.tags, "who": who.user_id, "deps": d.settings.app_name},
        status_code=202,
    )


class _Authenticator:
    async def authenticate(self, request: Request) -> Principal:
        token = request.headers.get("authorization", "")
        if token == "Bearer writer":
            return Principal("u-1", "user", frozenset({"knowledge:write"}))
        if token == "Bearer reader":
            return Principal("u-2", "user", frozenset({"knowledge:read"}))
        raise unauthorized()


def make_app(with_lane: bool) -> FastAPI:
    app = FastAPI()
    problems.install(app)
    app.post("/v1/things", status_code=202)(endpoint)
    if with_lane:
        install_lanes(app, lane("POST", "/v1/things", endpoint, status_code=202))
    app.state.auth = SimpleNamespace(authenticator=_Authenticator())
    app.state.deps = SimpleNamespace(settings=SimpleNamespace(app_name="uait"))
    return app


async def answer(
    app: FastAPI, content: bytes, token: str | None, media_type: str = "application/json"
) -> tuple[int, Any]:
    headers = {"Content-Type": media_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        r = await client.post("/v1/things", content=content, headers=headers)
    return r.status_code, r.json()


CASES = [
    (b'{"title": "ok", "tags": ["a"]}', "writer"),
    (b'{"title": "ok"}', None),
    (b'{"title": "ok"}', "nonsense"),
    (b'{"title": "ok"}', "reader"),
    (b'{"title": ""}', "writer"),
    (b'{"title": "x", "extra": 1}', "writer"),
    (b'{"tags": "not a list"}', "writer"),
    (b'["not an object"]', "writer"),
    (b"", "writer"),
    (b'{"title": "ok"}', "writer", "text/plain"),
    (b'{"title": "ok"}', "writer", "application/merge-patch+json"),
    (b'{"title": "ok\\u00e9", "tags": []}', "writer", "application/json; charset=utf-8"),
]


@pytest.mark.parametrize("case", CASES)
async def test_a_lane_answers_as_the_api_route(case: tuple[Any, ...]):
    assert await answer(make_app(with_lane=True), *case) == await answer(
        make_app(with_lane=False), *case
    )


async def test_the_lane_serves_the_request():
    app = make_app(with_lane=True)
    served: list[str] = []

    async def spy(scope: Any, receive: Any, send: Any) -> None:
        served.append(type(scope.get("route")).__name__)
        await lane_app(scope, receive, send)

    lane_app = app.router.routes[0].app  # type: ignore[attr-defined]
    app.router.routes[0].app = spy  # type: ignore[attr-defined]
    status, _ = await answer(app, b'{"title": "ok"}', "writer")
    assert status == 202
    assert served == ["NoneType"]  # reached the lane before any other route matched


async def test_invalid_json_is_a_validation_problem_in_both():
    for with_lane in (True, False):
        status, body = await answer(make_app(with_lane), b'{"title": ', "writer")
        assert status == 422
        assert body["type"] == "urn:uait:problem:validation"


def test_an_endpoint_with_other_parameters_cannot_take_a_lane():
    async def with_query(body: Body, who: Writer, limit: int = 10) -> None: ...

    async def without_principal(body: Body, request: Request) -> None: ...

    with pytest.raises(TypeError, match="cannot take a lane"):
        _roles(with_query)
    with pytest.raises(TypeError, match="one body model and one principal"):
        _roles(without_principal)


def test_every_lane_of_the_app_is_a_declared_operation_with_the_same_body():
    app = create_app(Settings(), REGISTRY, database_url="", kafka_bootstrap="")
    spec = app.openapi()
    for route in knowledge.LANES:
        lane_app = route.app  # type: ignore[attr-defined]
        (method,) = route.methods - {"HEAD"}  # type: ignore[operator]
        operation = spec["paths"][route.path][method.lower()]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[-1] == lane_app.model.__name__
        assert app.router.routes[0] is knowledge.LANES[0]
