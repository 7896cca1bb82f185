"""Follow projection positions, for ``?after=`` and ``Prefer: wait``, without polling.

One LISTEN connection per ingress process receives ``name:position`` from every projection
commit (see ``projections.runner``); waiters sleep on an asyncio.Condition until the position
they need is reached or their deadline passes. The same connection follows each projection's
live version (changed by a blue/green swap or a rollback), which cache keys carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import psycopg

from projections.control import CONTROL_CHANNEL
from projections.runner import POSITIONS_CHANNEL

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("uait.ingress")


class PositionWatcher:
    def __init__(
        self,
        database_url: str,
        tracking_tables: dict[str, str],
        event_channels: tuple[str, ...] = (),
    ) -> None:
        """``tracking_tables`` maps each projection name to its context's tracking table;
        ``event_channels`` are the event tables' channels (their appends wake event streams)."""
        self.database_url = database_url
        self.tracking_tables = tracking_tables
        self.event_channels = event_channels
        self.positions: dict[str, int] = {}
        self.versions: dict[str, int] = {}
        """Each projection's live version, as ``projection_state`` says (absent: not recorded)."""
        self.versions_loaded = False
        """True once ``versions`` has been read (until then nobody knows the live version)."""
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="position-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _load(self, conn: psycopg.AsyncConnection[Any]) -> None:
        for name, table in self.tracking_tables.items():
            with contextlib.suppress(psycopg.errors.UndefinedTable):
                cur = await conn.execute(
                    f'SELECT notification_id FROM "{table}" WHERE application_name = %s',
                    (name,),
                )
                row = await cur.fetchone()
                if row is not None:
                    self._advance(name, int(row[0]))

    async def _load_versions(self, conn: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(psycopg.errors.UndefinedTable):
            cur = await conn.execute(
                "SELECT name, live_version FROM projection_state WHERE live_version IS NOT NULL"
            )
            self.versions = {str(name): int(version) for name, version in await cur.fetchall()}
        self.versions_loaded = True

    def _advance(self, name: str, position: int) -> None:
        if position > self.positions.get(name, 0):
            self.positions[name] = position

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.database_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {POSITIONS_CHANNEL}")
                    await conn.execute(f"LISTEN {CONTROL_CHANNEL}")
                    for channel in self.event_channels:
                        await conn.execute(f'LISTEN "{channel}"')
                    await self._load(conn)  # after LISTEN, so no commit falls in between
                    await self._load_versions(conn)
                    await self._notify_all()
                    backoff = 0.1
                    async for note in conn.notifies():
                        if note.channel == POSITIONS_CHANNEL:
                            name, _, pos = note.payload.rpartition(":")
                            self._advance(name, int(pos))
                        elif note.channel == CONTROL_CHANNEL:
                            # Not on this connection: it is busy in notifies().
                            async with await psycopg.AsyncConnection.connect(
                                self.database_url, autocommit=True
                            ) as other:
                                await self._load_versions(other)
                        await self._notify_all()
            except (psycopg.OperationalError, OSError) as exc:
                log.warning("position watcher lost its connection (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _notify_all(self) -> None:
        # Wake everyone waiting on the current generation, and start a new one.
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def generation(self) -> asyncio.Event:
        """An event set at the next change (projection commit or event append)."""
        return self._changed

    async def wait_for(self, name: str, position: int, timeout: float) -> bool:
        """True once projection ``name`` has committed ``position``; False on timeout."""

        async def reached() -> bool:
            return self.positions.get(name, 0) >= position

        return await self.wait_for_check(reached, timeout)

    async def wait_for_check(self, check: Callable[[], Awaitable[bool]], timeout: float) -> bool:
        """Re-run an async ``check`` after every projection commit until true or timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            changed = self._changed  # taken before the check: no commit can slip between
            if await check():
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
