"""Live output of long-running commands: a Redis stream per command (``uait:run:<id>``).

A run appends its tokens and progress as entries (``kind`` and a JSON ``data``), then one
``final`` entry, after which the stream expires (``run_stream_ttl_s``). Readers follow it with
``XREAD`` from the last id they saw, so a client that reconnects with ``Last-Event-ID`` gets
what it missed. Only the final result and coarse steps are events; tokens live here alone, and
a worker that takes a run over reads them back to continue after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

    from redis.asyncio import Redis

FINAL = "final"

log = logging.getLogger("uait.runs")


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
    """A process's writer and reader of the live streams.

    Writes are group-committed: every run's entries go into one queue, and one flusher sends
    what has gathered as one pipeline (one round trip for all runs, whatever their number),
    in order, while the next entries gather. ``finish`` and ``drain`` wait until their entries
    are written; ``enqueue`` does not.
    """

    MAX_QUEUED = 20_000
    """Past this many entries waiting, ``append`` waits for the flusher (back-pressure)."""

    def __init__(self, redis: Redis, *, ttl_s: int) -> None:
        self.redis = redis
        self.ttl_s = ttl_s
        self._queue: list[tuple[str, str, bytes, asyncio.Future[None] | None]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    def enqueue(self, command_id: uuid.UUID, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Queue entries of a run's stream, in order (written at the next flush)."""
        key = stream_key(command_id)
        for kind, data in entries:
            self._queue.append((key, kind, orjson.dumps(data), None))
        self._kick()

    async def append(
        self, command_id: uuid.UUID, entries: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Queue entries; waits only when the queue is over ``MAX_QUEUED``."""
        self.enqueue(command_id, entries)
        if len(self._queue) > self.MAX_QUEUED:
            await self.drain()

    async def finish(self, command_id: uuid.UUID, data: dict[str, Any]) -> None:
        """The final entry, after every entry queued before it; the stream then expires after
        the configured time. Returns once it is written (raises if it could not be)."""
        done = asyncio.get_running_loop().create_future()
        self._queue.append((stream_key(command_id), FINAL, orjson.dumps(data), done))
        self._kick()
        await done

    async def drain(self) -> None:
        """Wait until everything queued so far is written (or failed)."""
        if not self._queue:
            return
        done = asyncio.get_running_loop().create_future()
        self._queue.append(("", "", b"", done))
        self._kick()
        with contextlib.suppress(Exception):
            await done

    def _kick(self) -> None:
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="run-streams-flush")

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                continue
            error: Exception | None = None
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key, kind, data, _ in batch:
                        if not key:
                            continue  # a drain marker
                        pipe.xadd(key, {"k": kind, "d": data})
                        if kind == FINAL:
                            pipe.expire(key, self.ttl_s)
                    await pipe.execute()
            except Exception as exc:  # Redis down: readers miss these; outcomes are events
                error = exc
                log.warning("live streams: %d entries not written: %s", len(batch), exc)
            for _, _, _, done in batch:
                if done is None or done.done():
                    continue
                if error is None:
                    done.set_result(None)
                else:
                    done.set_exception(error)

    async def history(self, command_id: uuid.UUID) -> list[Entry]:
        """Everything appended so far (what a worker taking the run over continues after)."""
        rows: Any = await self.redis.xrange(stream_key(command_id))
        return [_entry(i, f) for i, f in rows]

    async def follow(
        self, command_id: uuid.UUID | str, after: str = "0-0", *, block_ms: int = 5000
    ) -> AsyncIterator[list[Entry] | None]:
        """Entries after ``after``, as they come, until the final one: each read's entries at
        once (a reader that falls behind gets what gathered in one piece, and answers it with
        one write); None after each ``block_ms`` without news (a caller's chance to send a
        keep-alive or give up)."""
        key = stream_key(command_id)
        last = after
        while True:
            found: Any = await self.redis.xread({key: last}, block=block_ms, count=512)
            if not found:
                yield None
                continue
            page = []
            for entry_id, fields in found[0][1]:
                entry = _entry(entry_id, fields)
                page.append(entry)
                if entry.kind == FINAL:
                    yield page
                    return
            last = page[-1].id
            yield page
