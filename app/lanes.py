"""Lanes: the hottest command routes, served without the router's scan and FastAPI's
per-request dependency solving, from the routes' own endpoints.

FastAPI's router tries the routes one after the other, and solving a route's parameters
re-derives the dependencies' signatures on every request; for a publish on this stack that is
about a third of the ingress's CPU (``uait bench ingress``). A lane is a Starlette route placed
first in the app for one method and path of an API route whose endpoint takes only a JSON body
model, the ``Request``, ``Deps`` and a ``require(...)`` principal. It does what FastAPI would:
authenticates and checks the permission as ``require`` does, validates the body with the model
(parsed by orjson) and calls the same endpoint. The API route stays
the declaration (OpenAPI, the path's other methods); errors go through the app's exception
handlers, so answers are the same problem documents.
"""

from __future__ import annotations

import inspect
import typing
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.routing import Route

from app.auth.principal import authorize
from app.deps import deps
from app.hardening import is_json_media_type, media_type

if TYPE_CHECKING:
    from collections.abc import Callable

    from fastapi import FastAPI
    from starlette.types import Receive, Scope, Send


def _roles(endpoint: Callable[..., Any]) -> dict[str, tuple[str, Any]]:
    """Each parameter's role: ("body", model), ("request", None), ("deps", None) or
    ("principal", permission). Anything else cannot take a lane."""
    hints = typing.get_type_hints(endpoint, include_extras=True)
    roles: dict[str, tuple[str, Any]] = {}
    for name in inspect.signature(endpoint).parameters:
        hint = hints.get(name)
        origin_args = typing.get_args(hint) if typing.get_origin(hint) is typing.Annotated else ()
        marker = next((m for m in origin_args[1:] if isinstance(m, Depends)), None)
        if hint is Request:
            roles[name] = ("request", None)
        elif marker is not None and marker.dependency is deps:
            roles[name] = ("deps", None)
        elif marker is not None and hasattr(marker.dependency, "permission"):
            roles[name] = ("principal", getattr(marker.dependency, "permission"))  # noqa: B009
        elif isinstance(hint, type) and issubclass(hint, BaseModel):
            roles[name] = ("body", hint)
        else:
            raise TypeError(f"{endpoint.__name__}: parameter {name!r} cannot take a lane")
    kinds = [kind for kind, _ in roles.values()]
    if kinds.count("body") != 1 or kinds.count("principal") != 1:
        raise TypeError(f"{endpoint.__name__}: a lane needs one body model and one principal")
    return roles


class Lane:
    """The ASGI app of one lane: ``route`` mounts it (see the module's doc).

    A plain ASGI app, not a request -> response endpoint: what it raises reaches the app's
    exception handlers as it is, without one more wrapper on every request.
    """

    def __init__(
        self, method: str, path: str, endpoint: Callable[..., Any], *, status_code: int = 200
    ) -> None:
        self.endpoint = endpoint
        self.status_code = status_code
        self.roles = _roles(endpoint)
        by_kind = {kind: value for kind, value in self.roles.values()}
        self.permission: str = by_kind["principal"]
        self.model: type[BaseModel] = by_kind["body"]
        self.route = Route(path, self, methods=[method], include_in_schema=False)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # the template, for metrics and spans
        response = await self.serve(Request(scope, receive))
        await response(scope, receive, send)

    async def serve(self, request: Request) -> Response:
        who = await authorize(request, self.permission)
        data = _json_body(await request.body(), request.headers.get("content-type"))
        try:
            body = self.model.model_validate(data, from_attributes=True)  # as FastAPI does
        except ValidationError as exc:
            errors = [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
            raise RequestValidationError(errors, body=data) from None
        values = {"body": body, "request": request, "deps": request.app.state.deps}
        kwargs = {
            name: who if kind == "principal" else values[kind]
            for name, (kind, _) in self.roles.items()
        }
        result = await self.endpoint(**kwargs)
        if isinstance(result, Response):
            return result
        return JSONResponse(jsonable_encoder(result), status_code=self.status_code)


def _json_body(raw: bytes, content_type: str | None) -> Any:
    """The body as FastAPI hands it to validation (parsed by orjson, which also refuses NaN,
    Infinity, lone surrogates and integers beyond 64 bits)."""
    if not raw:
        missing = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}
        raise RequestValidationError([missing])
    if not is_json_media_type(media_type(content_type)):
        return raw  # validated as it is, and refused, as FastAPI does
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = {
            "type": "json_invalid",
            "loc": ("body", exc.pos),
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": exc.msg},
        }
        raise RequestValidationError([error], body=raw) from None


def lane(method: str, path: str, endpoint: Callable[..., Any], *, status_code: int = 200) -> Route:
    """A Starlette route serving ``method path`` with ``endpoint`` (see the module's doc)."""
    return Lane(method, path, endpoint, status_code=status_code).route


def install_lanes(app: FastAPI, *lanes: Route) -> None:
    """Put the lanes before every other route (the API routes they serve stay declared)."""
    app.router.routes[:0] = lanes
