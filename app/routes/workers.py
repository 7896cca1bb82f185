"""Admin routes to pause and resume command consumption (workers stay in their group)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path
from redis.exceptions import RedisError

from app.auth.principal import require
from app.deps import Deps, deps
from app.problems import V1_PROBLEMS, V1_WRITE_PROBLEMS, ProblemError, problem_responses
from infra.control import paused_contexts, set_paused

router = APIRouter(
    dependencies=[Depends(require("admin"))],
    prefix="/v1/admin/workers",
    tags=["admin"],
    responses=problem_responses(*V1_PROBLEMS),
)


def _redis(d: Deps) -> Any:
    if d.redis is None:
        raise ProblemError(503, "Worker control not available", "UAIT_REDIS_URL is empty")
    return d.redis


async def _state(d: Deps) -> dict[str, Any]:
    try:
        paused = await paused_contexts(_redis(d))
    except RedisError as exc:
        raise ProblemError(503, "Redis unavailable", str(exc)) from exc
    return {"contexts": {c: "paused" if c in paused else "running" for c in d.contexts.names}}


@router.get("")
async def workers_state(d: Annotated[Deps, Depends(deps)]) -> Any:
    """Which contexts are paused; every worker applies a change within a second."""
    return await _state(d)


@router.post("/{context}/{action}", responses=problem_responses(*V1_WRITE_PROBLEMS, 404))
async def steer_workers(
    d: Annotated[Deps, Depends(deps)],
    context: Annotated[str, Path(max_length=64)],
    action: Literal["pause", "resume"],
) -> Any:
    if context not in d.contexts.names:
        raise ProblemError(404, "Unknown context", f"no context {context!r}")
    try:
        await set_paused(_redis(d), [context], action == "pause")
    except RedisError as exc:
        raise ProblemError(503, "Redis unavailable", str(exc)) from exc
    return await _state(d)
