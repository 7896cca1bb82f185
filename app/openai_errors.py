"""OpenAI's error shape on the OpenAI-compatible routes.

Clients of those routes (the ``openai`` package, LangChain, DSPy through LiteLLM) read
``{"error": {"message", "type", "param", "code"}}``. Every other part of the ingress answers
problem+json; this middleware rewrites those answers on the OpenAI paths, so that a 401 of the
authenticator, a 429 of the rate limiter or a 413 of the size limit reads the same way as a
route's own errors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel

from app.problems import PROBLEM_JSON

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error shape, as the OpenAI-compatible routes answer every error."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Invalid request (a parameter, the body, the JSON)",
    401: "Not authenticated (an API key as `Authorization: Bearer`)",
    403: "Not allowed (the key lacks the permission)",
    404: "Unknown model",
    409: "Conflict (e.g. the request was cancelled)",
    413: "Request body too large",
    415: "Request body is not application/json",
    422: "Invalid request (told as 400 on these routes)",
    429: "Too many requests (see Retry-After)",
    502: "The backend failed",
    503: "A dependency is unavailable (see Retry-After)",
    504: "Not finished within the wait (it goes on: see X-Uait-Status-Url)",
}

OPENAI_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504)


def openai_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses``: these statuses answer in OpenAI's error shape."""
    return {
        status: {"description": _DESCRIPTIONS.get(status, "Error"), "model": OpenAIErrorBody}
        for status in statuses
    }


def error_body(
    status: int, message: str, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_problem(status: int, problem: dict[str, Any]) -> dict[str, Any]:
    message = str(problem.get("detail") or problem.get("title") or "error")
    param = None
    errors = problem.get("errors")
    if isinstance(errors, list) and errors:
        first = errors[0]
        param = str(first.get("field", "")).removeprefix("body.") or None
        message = f"{first.get('field')}: {first.get('message')}"
    kind = str(problem.get("type", ""))
    code = kind.rsplit(":", 1)[-1] if kind.startswith("urn:") else None
    return error_body(status, message, code=code, param=param)


class OpenAIErrors:
    """ASGI middleware: problem+json answers under ``prefixes`` become OpenAI errors."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        body = bytearray()

        async def wrapped(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                given = dict(message.get("headers", []))
                if given.get(b"content-type", b"").startswith(PROBLEM_JSON.encode()):
                    start = message
                    return
                await send(message)
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            body.extend(message.get("body", b""))
            if message.get("more_body"):
                return
            try:
                problem = orjson.loads(bytes(body))
            except orjson.JSONDecodeError:
                problem = {"detail": bytes(body).decode("utf-8", "replace")}
            # OpenAI answers an invalid parameter with 400, never 422.
            status = 400 if start["status"] == 422 else start["status"]
            content = orjson.dumps(from_problem(status, problem))
            headers: list[tuple[bytes, bytes]] = [
                (k, v)
                for k, v in start.get("headers", [])
                if k not in (b"content-type", b"content-length")
            ]
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
            ]
            await send({**start, "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": content})

        await self.app(scope, receive, wrapped)
