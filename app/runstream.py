"""The live streams of long-running commands, as the ingress reads them (``infra.runstreams``):
one Redis client without a read timeout (a reader blocks on ``XREAD`` between tokens), built on
first use and closed with the app."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from app.problems import ProblemError
from infra.runstreams import RunStreams

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

    from app.deps import Deps
    from infra.runstreams import Entry

_KEY = "_run_streams"
KEEPALIVE_S = 15.0
"""A comment line this often keeps proxies from closing a quiet stream."""
OUTCOME_CHECK_S = 1.0
"""How often a reader with no news looks whether the command ended without a stream entry
(rejected before it ran, or its worker died after recording the outcome)."""


async def run_streams(d: Deps) -> RunStreams:
    streams = d.extensions.get(_KEY)
    if streams is None:
        if not d.settings.redis_url:
            raise ProblemError(503, "Live streams not available", "UAIT_REDIS_URL is empty")
        from redis.asyncio import Redis

        redis = Redis.from_url(d.settings.redis_url, socket_connect_timeout=1, max_connections=4096)
        streams = d.extensions[_KEY] = RunStreams(redis, ttl_s=d.settings.run_stream_ttl_s)
    assert isinstance(streams, RunStreams)
    return streams


async def close_run_streams(d: Deps) -> None:
    streams = d.extensions.pop(_KEY, None)
    if isinstance(streams, RunStreams):
        with contextlib.suppress(Exception):
            await streams.redis.aclose()


async def follow(
    d: Deps, command_id: uuid.UUID, after: str = "0-0"
) -> AsyncIterator[list[Entry] | dict[str, Any] | None]:
    """A run's entries from ``after`` to its final one, a read's worth at a time. When the
    command ends without a final entry, yields its outcome row instead (a dict) and stops;
    yields None on quiet periods (a chance for a keep-alive)."""
    streams = await run_streams(d)
    last = after
    quiet = 0.0
    while True:
        async for page in streams.follow(command_id, last, block_ms=int(OUTCOME_CHECK_S * 1000)):
            if page is None:
                break
            last = page[-1].id
            quiet = 0.0
            yield page
            if page[-1].kind == "final":
                return
        quiet += OUTCOME_CHECK_S
        row = await d.queries.command(command_id)
        if row is not None and row["status"] in ("succeeded", "rejected"):
            # Ended: take what the stream got meanwhile (its final entry, most often), else the
            # outcome alone.
            async for page in streams.follow(command_id, last, block_ms=200):
                if page is None:
                    break
                yield page
                if page[-1].kind == "final":
                    return
            yield row
            return
        if quiet >= KEEPALIVE_S:
            quiet = 0.0
            yield None
