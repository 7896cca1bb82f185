"""Command lifecycle: accepted -> processing -> succeeded | rejected."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.encoders import jsonable_encoder

from app.auth.principal import Principal, require
from app.deps import Deps, deps
from app.problems import V1_PROBLEMS, ProblemError, problem_responses
from app.queries import BadCursorError

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
