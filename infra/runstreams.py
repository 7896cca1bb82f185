"""Live output of long-running commands: a Redis stream per command (``uait:run:<id>``).

A run appends its tokens and progress as entries (``kind`` and a JSON ``data``), then one
``final`` entry, after which the stream expires (``run_stream_ttl_s``). Readers follow it with
``XREAD`` from the last id they saw, so a client that reconnects with ``Last-Event-ID`` gets
what it missed. Only the final result and coarse steps are events; tokens live here alone, and
a worker that takes a run over reads them back to continue after them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

FINAL = "final"


def stream_key(command_id: uuid.UUID | str) -> str:
    return f"uait:run:{command_id}"


@dataclass(frozen=True)
class Entry:
    id: str
    """The stream entry id (``<ms>-<seq>``): the SSE event id, and where to resume."""
    kind: str
    data: dict[str, Any]


def _entry(entry_id: bytes | str, fields: dict[Any, Any]) -> Entry:
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return Entry(eid, fields[b"k"].decode(), orjson.loads(fields[b"d"]))


class RunStreams:
    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s

    async def append(
        self, command_id: uuid.UUID, entries: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Append entries in order (one round trip)."""
        if not entries:
            return
        key = stream_key(command_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            for kind, data in entries:
                pipe.xadd(key, {"k": kind, "d": orjson.dumps(data)})
            await pipe.execute()

    async def finish(self, command_id: uuid.UUID, data: dict[str, Any]) -> None:
        """The final entry; the stream then expires after the configured time."""
        key = stream_key(command_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"k": FINAL, "d": orjson.dumps(data)})
            pipe.expire(key, self.ttl_s)
            await pipe.execute()

    async def history(self, command_id: uuid.UUID) -> list[Entry]:
        """Everything appended so far (what a worker taking the run over continues after)."""
        rows: Any = await self.redis.xrange(stream_key(command_id))
        return [_entry(i, f) for i, f in rows]

    async def follow(
        self, command_id: uuid.UUID | str, after: str = "0-0", *, block_ms: int = 5000
    ) -> AsyncIterator[Entry | None]:
        """Entries after ``after``, as they come, until the final one; yields None after each
        ``block_ms`` without news (a caller's chance to send a keep-alive or give up)."""
        key = stream_key(command_id)
        last = after
        while True:
            found: Any = await self.redis.xread({key: last}, block=block_ms, count=512)
            if not found:
                yield None
                continue
            for entry_id, fields in found[0][1]:
                entry = _entry(entry_id, fields)
                last = entry.id
                yield entry
                if entry.kind == FINAL:
                    return
