"""Small helpers shared by the ingress's ASGI middlewares."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Send


async def send_problem(
    send: Send,
    status: int,
    title: str,
    detail: str,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    instance: str = "",
) -> None:
    """Answer with an RFC 9457 problem document, before the app has started a response."""
    problem: dict[str, object] = {"type": type_, "title": title, "status": status}
    if detail:
        problem["detail"] = detail
    if instance:
        problem["instance"] = instance
    body = orjson.dumps(problem)
    raw = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def replay(messages: list[Message], then: Receive | None = None) -> Receive:
    """A ``receive`` that hands out ``messages`` first (a body already read), then ``then``."""
    pending = list(messages)

    async def receive() -> Message:
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive
