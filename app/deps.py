"""What the routes need, built once by the composition root and kept on ``app.state``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from fastapi import Request  # noqa: TC002  (FastAPI resolves this annotation at runtime)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from app.accepted import AcceptedLog
    from app.cache.knowledge import CachedQueries
    from app.positions import PositionWatcher
    from app.publisher import CommandPublisher
    from app.queries import Queries
    from infra.settings import Settings


@dataclass
class Deps:
    settings: Settings
    publisher: CommandPublisher
    queries: Queries
    watcher: PositionWatcher
    redis: Redis | None = None
    """The process's one Redis client (rate limits, idempotency, breakers, worker control)."""
    accepted: AcceptedLog | None = None
    """Group-commit writer of accepted commands' command_log rows (None: one INSERT each)."""
    cached: CachedQueries | None = None
    """The read-model queries through the cache (None: cache disabled or no Redis)."""


async def deps(request: Request) -> Deps:
    # async: FastAPI would run a plain function in its thread pool, on every request.
    return cast("Deps", request.app.state.deps)
