"""Admin routes for the circuit breakers: list them, force them open or closed, reset them.

The breakers live in Redis, reached through the ingress's one Redis client (``Deps.redis``).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.auth.principal import require
from app.deps import Deps, deps
from app.problems import V1_PROBLEMS, V1_WRITE_PROBLEMS, ProblemError, problem_responses
from infra.breakers import NAME_PATTERN, BreakerRegistry, BreakerStatus

log = logging.getLogger("uait.ingress.breakers")

router = APIRouter(
    dependencies=[Depends(require("admin"))],
    prefix="/v1/admin/breakers",
    tags=["admin"],
    responses=problem_responses(*V1_PROBLEMS),
)
STEER_RESPONSES = problem_responses(*V1_WRITE_PROBLEMS, 404)


async def _redis(request: Request, d: Deps) -> Redis:
    if d.redis is None:
        raise ProblemError(
            503, "Breakers not available", "UAIT_REDIS_URL is empty: breakers need Redis"
        )
    return d.redis


async def registry(request: Request, d: Annotated[Deps, Depends(deps)]) -> BreakerRegistry:
    return BreakerRegistry(await _redis(request, d))


Registry = Annotated[BreakerRegistry, Depends(registry)]
BreakerName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=100)]


def _unavailable(exc: RedisError) -> ProblemError:
    return ProblemError(503, "Redis unavailable", str(exc), headers={"Retry-After": "5"})


@router.get("")
async def list_breakers(reg: Registry) -> dict[str, list[BreakerStatus]]:
    """Every breaker any process has used: state, window (calls, failure and slow-call rates,
    probes in flight) and the config it was last used with."""
    try:
        return {"breakers": await reg.statuses()}
    except RedisError as exc:
        raise _unavailable(exc) from exc


async def _steer(
    reg: BreakerRegistry, name: str, action: str, request: Request | None = None
) -> BreakerStatus:
    try:
        if not await reg.exists(name):
            raise ProblemError(404, "Unknown breaker", f"no breaker named {name!r}")
        breaker = await reg.get(name)
        if action == "open":
            await breaker.force_open("forced open through the admin API")
        elif action == "close":
            await breaker.force_close("forced closed through the admin API")
        else:
            await breaker.reset("reset through the admin API")
        status = await reg.status(name)
    except RedisError as exc:
        raise _unavailable(exc) from exc
    await _audit(request, name, action)
    return status


async def _audit(request: Request | None, name: str, action: str) -> None:
    """An operator's change of a breaker is an audit entry (automatic ones are metrics)."""
    if request is None:
        return
    auditor = getattr(getattr(request.app.state, "auth", None), "auditor", None)
    principal = getattr(request.state, "principal", None)
    if auditor is None or principal is None:
        return
    await auditor.record(
        f"breaker.{action}", subject=None, actor=principal.actor, request=request, detail=name
    )


@router.post("/{name}/open", responses=STEER_RESPONSES)
async def open_breaker(reg: Registry, name: BreakerName, request: Request) -> BreakerStatus:
    """Force the breaker open: every call fails fast (or gets its fallback) until a reset."""
    return await _steer(reg, name, "open", request)


@router.post("/{name}/close", responses=STEER_RESPONSES)
async def close_breaker(reg: Registry, name: BreakerName, request: Request) -> BreakerStatus:
    """Force the breaker closed: every call goes through until a reset."""
    return await _steer(reg, name, "close", request)


@router.post("/{name}/reset", responses=STEER_RESPONSES)
async def reset_breaker(reg: Registry, name: BreakerName, request: Request) -> BreakerStatus:
    """Back to closed with an empty window (ends a forced state)."""
    return await _steer(reg, name, "reset", request)
