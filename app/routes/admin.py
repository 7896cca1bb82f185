"""Admin routes: metric history from Prometheus' HTTP API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Path, Query

from app.auth.principal import require
from app.deps import Deps, deps
from app.problems import V1_PROBLEMS, ProblemError, problem_responses
from telemetry.metrics import SERIES_NAMES

router = APIRouter(
    dependencies=[Depends(require("admin"))],
    prefix="/v1/admin",
    tags=["admin"],
    responses=problem_responses(*V1_PROBLEMS),
)

MAX_POINTS = 11_000  # Prometheus refuses more points per series


@router.get("/metrics/{name}", responses=problem_responses(404, 502))
async def metric_history(
    d: Annotated[Deps, Depends(deps)],
    name: Annotated[str, Path(pattern=r"^uait_[a-z0-9_]+$", max_length=100)],
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
    step: Annotated[float, Query(gt=0, le=86_400, description="seconds")] = 60.0,
) -> Any:
    """One series family of this service over time (default: the last hour), per label set.

    Only names this service exports are accepted: the name is the whole query, never PromQL.
    """
    if not d.settings.prometheus_url:
        raise ProblemError(
            503, "Metric history not configured", "set UAIT_PROMETHEUS_URL to a Prometheus server"
        )
    if name not in SERIES_NAMES:
        raise ProblemError(404, "Unknown metric", f"this service exports no series {name!r}")
    end = end or datetime.now(UTC)
    start = start or end - timedelta(hours=1)
    if start.tzinfo is None or end.tzinfo is None:
        raise ProblemError(422, "Invalid range", "from and to need a time zone (e.g. Z)")
    if start >= end:
        raise ProblemError(422, "Invalid range", "from must be before to")
    if (end - start).total_seconds() / step > MAX_POINTS:
        raise ProblemError(422, "Invalid range", f"more than {MAX_POINTS} points: raise step")
    params: dict[str, str | float] = {
        "query": name,
        "start": start.timestamp(),
        "end": end.timestamp(),
        "step": step,
    }
    try:
        async with httpx.AsyncClient(base_url=d.settings.prometheus_url, timeout=10) as client:
            answer = await client.get("/api/v1/query_range", params=params)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise ProblemError(
            503, "Prometheus unavailable", str(exc), headers={"Retry-After": "5"}
        ) from exc
    if answer.status_code != 200 or body.get("status") != "success":
        raise ProblemError(502, "Prometheus refused the query", str(body.get("error", "")))
    return {
        "name": name,
        "from": start,
        "to": end,
        "step": step,
        "series": [
            {
                "labels": {k: v for k, v in s["metric"].items() if k != "__name__"},
                "points": [[float(t), float(v)] for t, v in s["values"]],
            }
            for s in body["data"]["result"]
        ],
    }
