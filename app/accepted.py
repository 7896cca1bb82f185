"""``command_log`` rows for accepted commands, written by group commit.

Each accepted command's row is written before its 202 goes out (so its status URL answers at
once), but not one INSERT per request: the rows queued meanwhile go in one statement
(``infra.coalesce``).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import orjson
import psycopg

from infra.coalesce import Coalescer

if TYPE_CHECKING:
    import uuid
    from datetime import datetime

    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

Row = tuple["uuid.UUID", str, str, "datetime", str | None]


# One JSON parameter for the whole batch: psycopg dumps five arrays element by element in
# Python, orjson writes the JSON in C, and PostgreSQL unpacks it.
INSERT = (
    "INSERT INTO command_log (command_id, context, command_type, accepted_at, actor)"
    " SELECT * FROM json_to_recordset(%s::json) AS r(command_id uuid, context text,"
    " command_type text, accepted_at timestamptz, actor text)"
    " ON CONFLICT (command_id) DO NOTHING"
)
FIELDS = ("command_id", "context", "command_type", "accepted_at", "actor")


class AcceptedLog:
    """While commands keep coming, the writer keeps one pooled connection (autocommit, the
    statement prepared): a batch is one round trip, not a checkout check, the INSERT and a
    COMMIT. It gives the connection back whenever its queue runs empty."""

    def __init__(self, pool: AsyncConnectionPool[Any], *, max_batch: int = 2000) -> None:
        self.pool = pool
        self._conn: AsyncConnection[Any] | None = None
        self._rows: Coalescer[Row, None] = Coalescer(
            self._write, max_batch=max_batch, on_idle=self._release
        )

    async def stop(self) -> None:
        await self._rows.close()
        await self._release()

    async def note(self, row: Row) -> None:
        """Return once ``row`` is written; raises what the write raised."""
        await self._rows(row)

    async def _write(self, rows: list[Row]) -> list[None]:
        batch = orjson.dumps([dict(zip(FIELDS, row, strict=True)) for row in rows]).decode()
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = await self.pool.getconn()
                    await self._conn.set_autocommit(True)
                await self._conn.execute(INSERT, (batch,), prepare=True)
                break
            except psycopg.OperationalError:
                # A connection broken since the last batch (PostgreSQL restarted): once more on
                # a fresh one. The INSERT is idempotent (ON CONFLICT DO NOTHING).
                await self._release()
                if attempt == 2:
                    raise
            except BaseException:
                await self._release()
                raise
        return [None] * len(rows)

    async def _release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(psycopg.Error):
            await conn.set_autocommit(False)  # as the pool lends it
        await self.pool.putconn(conn)  # the pool discards a broken one
