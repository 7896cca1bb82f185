"""The ingress's Redis client: one pool per process, short timeouts, built in the lifespan."""

from __future__ import annotations

from typing import TYPE_CHECKING

from redis.asyncio import BlockingConnectionPool, Redis

if TYPE_CHECKING:
    from infra.settings import Settings


def create_redis(settings: Settings) -> Redis | None:
    """A client of ``UAIT_REDIS_URL`` (None when it is empty: limits then fail open or closed).

    The pool is bounded and waits at most ``redis_timeout_s`` for a free connection; connects and
    reads time out as quickly, so a dead Redis costs a request a fraction of a second, not 5 s.
    """
    if not settings.redis_url:
        return None
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_max,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    return Redis(connection_pool=pool)
