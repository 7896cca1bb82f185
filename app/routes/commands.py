"""Command lifecycle: accepted -> processing -> succeeded | rejected."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, StreamingResponse
from redis.exceptions import RedisError

from app.auth.principal import Principal, require
from app.deps import Deps, deps
from app.problems import V1_PROBLEMS, V1_WRITE_PROBLEMS, ProblemError, problem_responses
from app.queries import BadCursorError
from app.runstream import follow, run_streams
from infra.cancel import request_cancel

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

router = APIRouter(
    prefix="/v1/commands", tags=["commands"], responses=problem_responses(*V1_PROBLEMS)
)


@router.get("/{command_id}", name="get_command", responses=problem_responses(404))
async def get_command(
    command_id: uuid.UUID,
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("commands:read"))],
) -> Any:
    """A command's status, timestamps, attempts, error, and the store position of its outcome
    (use it as `?after=` on queries to read your own write). Only your own, unless admin."""
    row = await d.queries.command(command_id, actor=None if who.is_admin else own(who))
    if row is None:
        raise ProblemError(404, "Command not found", f"no command {command_id}")
    return jsonable_encoder(row)


@router.get("", responses=problem_responses(400))
async def list_commands(
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("commands:read"))],
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Any:
    try:
        items, next_cursor = await d.queries.commands(
            cursor, limit, actor=None if who.is_admin else own(who)
        )
    except (BadCursorError, ValueError) as exc:
        raise ProblemError(400, "Bad cursor", str(exc)) from exc
    return jsonable_encoder({"items": items, "next_cursor": next_cursor})


def own(who: Principal) -> str:
    """The actor prefix of everything a user sent, with a login or any of their keys."""
    return f"user:{who.user_id}"


@router.post(
    "/{command_id}/cancel",
    status_code=202,
    responses=problem_responses(*V1_WRITE_PROBLEMS, 404),
)
async def cancel_command(
    command_id: uuid.UUID,
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("commands:read"))],
) -> Any:
    """Cancel a command: one still waiting (or in retry) is never executed, a running one stops
    at its next check; its outcome becomes `rejected` with the code `cancelled`. A finished
    command cannot be cancelled (409). Only your own commands, unless admin."""
    row = await d.queries.command(command_id, actor=None if who.is_admin else own(who))
    if row is None:
        raise ProblemError(404, "Command not found", f"no command {command_id}")
    if row["status"] in ("succeeded", "rejected"):
        raise ProblemError(
            409,
            "Command already finished",
            f"command {command_id} is {row['status']}",
            type_="urn:uait:problem:command-finished",
        )
    if d.redis is None:
        raise ProblemError(503, "Cancellation not available", "UAIT_REDIS_URL is empty")
    try:
        await request_cancel(d.redis, command_id, ttl_s=d.settings.cancel_ttl_s)
    except RedisError as exc:
        raise ProblemError(
            503, "Redis unavailable", str(exc), headers={"Retry-After": "5"}
        ) from exc
    url = str(request.url_for("get_command", command_id=str(command_id)))
    return JSONResponse(
        {"command_id": str(command_id), "status": "cancelling", "status_url": url},
        status_code=202,
        headers={"Location": url},
    )


@router.get(
    "/{command_id}/stream",
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"},
        **problem_responses(404, 503),
    },
)
async def stream_command(
    command_id: uuid.UUID,
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("commands:read"))],
) -> Any:
    """The live output of a long-running command (tokens, progress, coarse steps) as
    Server-Sent Events: each event's `id` is its place in the stream, `event` its kind
    (`token`, `progress`, `step`, ...; `done` with the result as soon as a run has it, then
    `final` last, once the result is recorded), `data` its JSON. Send
    `Last-Event-ID` to resume after a reconnect: you get what you missed. A command that ended
    without a stream (rejected before it ran) gets one `final` event with its outcome."""
    row = await d.queries.command(command_id, actor=None if who.is_admin else own(who))
    if row is None:
        raise ProblemError(404, "Command not found", f"no command {command_id}")
    after = request.headers.get("last-event-id") or "0-0"
    if not _STREAM_ID.match(after):
        raise ProblemError(400, "Bad Last-Event-ID", "expected a stream id such as 1700000000000-0")
    await run_streams(d)  # 503 now, not inside the stream, when there is no Redis

    async def events() -> AsyncIterator[bytes]:
        try:
            async for page in follow(d, command_id, after):
                if page is None:
                    yield b": keep-alive\n\n"
                elif isinstance(page, dict):
                    data = orjson.dumps(jsonable_encoder(page))
                    yield b"event: final\ndata: " + data + b"\n\n"
                else:
                    yield b"".join(
                        f"id: {entry.id}\nevent: {entry.kind}\ndata: ".encode()
                        + orjson.dumps(entry.data)
                        + b"\n\n"
                        for entry in page
                    )
        except RedisError as exc:
            yield b"event: error\ndata: " + orjson.dumps({"message": str(exc)}) + b"\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
