"""RFC 9457 problem details for every error the ingress answers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

if TYPE_CHECKING:
    from fastapi import FastAPI, Request

PROBLEM_JSON = "application/problem+json"


class FieldIssue(BaseModel):
    """One field that failed validation."""

    field: str
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document; some problems add members (e.g. ``errors``)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="a URI naming the kind of problem; about:blank for plain HTTP")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldIssue] | None = Field(
        default=None, description="the fields that failed validation (422 only)"
    )


_PROBLEM_DESCRIPTIONS = {
    400: "Bad request (e.g. a bad cursor, an invalid Idempotency-Key, JSON too deep or too wide)",
    404: "Not found",
    409: "Conflict (e.g. a request with this Idempotency-Key is in progress)",
    413: "Request body too large",
    415: "Request body is not application/json",
    422: "Invalid request",
    429: "Too many requests (see Retry-After and the RateLimit headers)",
    502: "An upstream service refused the request",
    503: "A dependency is unavailable (see Retry-After)",
}
_PROBLEM_REF = "#/components/schemas/Problem"


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for routes: these statuses answer with a problem document."""
    return {
        status: {
            "description": _PROBLEM_DESCRIPTIONS.get(status, "Error"),
            "content": {PROBLEM_JSON: {"schema": {"$ref": _PROBLEM_REF}}},
        }
        for status in statuses
    }


# Every /v1 route: invalid parameters (422), the rate limit (429) and, for a policy that fails
# closed, its limiter being unavailable (503).
V1_PROBLEMS = (401, 403, 422, 429, 503)
# Every /v1 route that takes POST or DELETE: the body and Idempotency-Key checks too.
V1_WRITE_PROBLEMS = (*V1_PROBLEMS, 400, 409, 413, 415)


class ProblemError(Exception):
    """Raised by routes to answer with a problem document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers = headers or {}
        self.extra = extra


def problem(
    status: int,
    title: str,
    detail: str = "",
    *,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _add_problem_schema(app: FastAPI) -> None:
    """Put ``Problem`` into the OpenAPI components that ``problem_responses`` refer to."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = generate()
        schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(schema.pop("$defs", {}))
        schemas["Problem"] = schema
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    _add_problem_schema(app)

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem(
            exc.status,
            exc.title,
            exc.detail,
            type_=exc.type,
            instance=request.url.path,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(p) for p in err["loc"]),
                "message": err["msg"],
                "type": err["type"],
            }
            for err in exc.errors()
        ]
        return problem(
            422,
            "Invalid request",
            f"{len(errors)} field(s) failed validation",
            type_="urn:uait:problem:validation",
            instance=request.url.path,
            errors=errors,
        )

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        return problem(
            exc.status_code,
            str(exc.detail) if exc.detail else "Error",
            instance=request.url.path,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(PoolTimeout)
    @app.exception_handler(psycopg.OperationalError)
    async def _database_down(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL stopped or unreachable (or another transient OperationalError: a deadlock,
        # a cancelled statement): a route that does not catch it would answer 500, which says
        # the server is broken. It is not: the same request works later.
        return problem(
            503,
            "Database unavailable",
            "PostgreSQL cannot be reached right now; retry shortly",
            type_="urn:uait:problem:database-unavailable",
            instance=request.url.path,
            headers={"Retry-After": "5"},
        )
