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
