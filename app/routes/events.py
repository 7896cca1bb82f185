"""The public event history and live stream: ``GET /v1/events`` and ``/v1/events/stream`` (SSE).

Only event types marked public are served; command outcomes stay internal. Every event has an id
``<context>:<position>``: a client resumes a stream after a disconnect with ``Last-Event-ID`` (or
``from_position``) and gets exactly the events after it, with no gap and no repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from psycopg.rows import dict_row
from psycopg.sql import SQL, Identifier
from starlette.requests import HTTPConnection

from app.auth.principal import forbidden
from app.deps import Deps, deps
from app.problems import ProblemError, problem_responses
from events.base import public_event_types
from events.stored import decode
from projections.base import Envelope
from projections.relay import public_form
from projections.replay import FIRST_POSITION_SINCE

router = APIRouter(prefix="/v1/events", tags=["events"])

HEARTBEAT_S = 15.0


def _types(requested: list[str] | None) -> list[str]:
    public = public_event_types()
    if not requested:
        return sorted(public)
    unknown = set(requested) - public
    if unknown:
        raise ProblemError(
            422, "Unknown event type", f"not public event types: {', '.join(sorted(unknown))}"
        )
    return sorted(set(requested))


async def _page(
    d: Deps, context: str, after: int, types: list[str], limit: int
) -> list[dict[str, Any]]:
    query = SQL(
        "SELECT notification_id, originator_id, originator_version, topic, state FROM {}"
        " WHERE notification_id > %s AND topic = ANY(%s) ORDER BY notification_id LIMIT %s"
    ).format(Identifier(f"{context}_events"))
    async with d.queries.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(query, (after, types, limit))
        rows = await cur.fetchall()
    out = []
    for row in rows:
        decoded = decode(row["topic"], bytes(row["state"]))
        env = Envelope(
            row["notification_id"],
            row["originator_id"],
            row["originator_version"],
            decoded.event,
            decoded.occurred_at,
            decoded.meta,
        )
        out.append(public_form(context, env))
    return out


async def _start(
    d: Deps, context: str, from_position: int | None, from_time: datetime | None
) -> int:
    after = max((from_position or 1) - 1, 0)
    if from_time is not None:
        async with d.queries.pool.connection() as conn:
            cur = await conn.execute(FIRST_POSITION_SINCE, (context, from_time))
            row = await cur.fetchone()
        first = row[0] if row else None
        if first is None:  # nothing committed since then: start at the head
            return await d.queries.head(context)
        after = max(after, int(first) - 1)
    return after


async def authorise(conn: HTTPConnection, context: str | None) -> str:
    """Authenticate the caller and check it may read ``context`` (401/403/404 otherwise); the
    context's name (the first registered one when none is asked for).

    Who may read a context's stream is the context's own permission, not one switch for all.
    """
    principal = await conn.app.state.auth.authenticator.authenticate(conn)
    d: Deps = conn.app.state.deps
    name = context or d.contexts.names[0]
    permission = next(
        (c.http.events_permission for c in d.contexts.contexts if c.name == name), None
    )
    if permission is None:
        raise ProblemError(404, "Unknown context", f"no context {name!r}")
    if permission not in principal.permissions:
        raise forbidden(permission)
    return name


@router.get("", responses=problem_responses(401, 403))
async def list_events(
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    context: Annotated[str | None, Query(description="default: the first context")] = None,
    from_position: Annotated[int | None, Query(ge=1)] = None,
    from_time: datetime | None = None,
    event_type: Annotated[list[str] | None, Query(alias="type")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """A page of public events in store order; ``next_position`` continues it."""
    context = await authorise(request, context)
    types = _types(event_type)
    after = await _start(d, context, from_position, from_time)
    items = await _page(d, context, after, types, limit)
    next_position = items[-1]["position"] + 1 if len(items) == limit else None
    return jsonable_encoder({"items": items, "next_position": next_position})


@router.get("/stream", responses=problem_responses(401, 403))
async def stream_events(
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    context: Annotated[str | None, Query(description="default: the first context")] = None,
    from_position: Annotated[int | None, Query(ge=1)] = None,
    event_type: Annotated[list[str] | None, Query(alias="type")] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    """Server-Sent Events: every public event from a position on, then live as they commit."""
    context = await authorise(request, context)
    types = _types(event_type)
    after = await _start(d, context, from_position, None)
    if last_event_id:
        prefix, _, position = last_event_id.rpartition(":")
        if prefix != context or not position.isdigit():
            raise ProblemError(400, "Bad Last-Event-ID", f"expected {context}:<position>")
        after = int(position)

    async def events() -> Any:
        position = after
        yield b"retry: 1000\n\n"
        while not await request.is_disconnected():
            changed = d.watcher.generation()
            batch = await _page(d, context, position, types, 500)
            for event in batch:
                position = event["position"]
                data = orjson.dumps(jsonable_encoder(event))
                yield b"id: %s\nevent: %s\ndata: %s\n\n" % (
                    event["event_id"].encode(),
                    event["type"].encode(),
                    data,
                )
            if len(batch) == 500:
                continue
            try:
                await asyncio.wait_for(changed.wait(), HEARTBEAT_S)
            except TimeoutError:
                yield b": keep-alive\n\n"

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.websocket("/ws")
async def events_socket(
    websocket: WebSocket,
    context: Annotated[str | None, Query(description="default: the first context")] = None,
    from_position: Annotated[int | None, Query(ge=1)] = None,
    event_type: Annotated[list[str] | None, Query(alias="type")] = None,
    last_event_id: str | None = None,
) -> None:
    """The same stream over a WebSocket: one JSON text message per event.

    Resume with ``last_event_id=<context>:<position>`` (or ``from_position``). Authenticate
    with the ``Authorization`` or ``X-API-Key`` header of the upgrade request.
    """
    d: Deps = websocket.app.state.deps
    try:
        context = await authorise(websocket, context)
        types = _types(event_type)
        after = await _start(d, context, from_position, None)
        if last_event_id:
            prefix, _, text = last_event_id.rpartition(":")
            if prefix != context or not text.isdigit():
                raise ProblemError(400, "Bad last_event_id", f"expected {context}:<position>")
            after = int(text)
    except ProblemError as exc:
        await websocket.close(code=1008, reason=exc.detail[:120])
        return
    await websocket.accept()
    position = after
    try:
        while True:
            changed = d.watcher.generation()
            batch = await _page(d, context, position, types, 500)
            for event in batch:
                position = event["position"]
                await websocket.send_text(orjson.dumps(jsonable_encoder(event)).decode())
            if len(batch) < 500:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), HEARTBEAT_S)
    except WebSocketDisconnect:
        return
