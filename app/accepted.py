"""``command_log`` rows for accepted commands, written by group commit.

Each accepted command's row is written before its 202 goes out (so its status URL answers at
once), but not one INSERT per request: requests queue their rows and wait; one writer inserts
everything queued in a single statement, then the next batch. Under load a batch holds many
rows; alone, a request waits only for its own insert.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uuid
    from datetime import datetime

    from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("uait.ingress")

Row = tuple["uuid.UUID", str, str, "datetime", str | None]


class AcceptedLog:
    def __init__(self, pool: AsyncConnectionPool[Any], *, max_batch: int = 2000) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._rows: list[tuple[Row, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="accepted-log")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._rows:
            await self._write(self._take())

    async def note(self, row: Row) -> None:
        """Return once ``row`` is written; raises what the write raised."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._rows.append((row, future))
        self._wake.set()
        await future

    def _take(self) -> list[tuple[Row, asyncio.Future[None]]]:
        batch, self._rows = self._rows[: self.max_batch], self._rows[self.max_batch :]
        return batch

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._rows:
                await self._write(self._take())

    async def _write(self, batch: list[tuple[Row, asyncio.Future[None]]]) -> None:
        rows = [row for row, _ in batch]
        try:
            async with self.pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO command_log (command_id, context, command_type, accepted_at,"
                    " actor) SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[],"
                    " %s::timestamptz[], %s::text[]) ON CONFLICT (command_id) DO NOTHING",
                    tuple(list(column) for column in zip(*rows, strict=True)),
                )
        except Exception as exc:  # every waiter learns it; the writer goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)
