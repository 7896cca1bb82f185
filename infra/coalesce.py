"""Group commit: the concurrent requests' round trips to one server, sent as one.

Each request's call queues its item and waits; one drainer sends everything queued in a single
round trip (one statement, one script call), hands each waiter its own result, then sends what
queued meanwhile. Alone, a request waits only for its own round trip; under load a batch holds
every request that arrived while the previous one was on the wire, so the per-call cost of the
client library (pool checkout, timeouts, packing, parsing) is paid once per batch, not per
request. A failed round trip raises its exception in every waiter of that batch; ``send`` may
also fail single items, by returning an exception as their result, or return a future for an
item whose result comes later (its waiter then waits for that future: one suspension, not two).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """``await coalescer(item)`` -> its result from ``send(batch)`` (one result per item)."""

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[Sequence[R | asyncio.Future[R] | BaseException]]],
        *,
        max_batch: int = 1000,
        on_idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``on_idle``: awaited when the queue runs empty (e.g. to give back a connection)."""
        self._send = send
        self.max_batch = max_batch
        self._on_idle = on_idle
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._drainer is None:
            # Starts at the next loop iteration: the requests handled in this one join it.
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def close(self) -> None:
        """Send what is queued, then stop (a later call starts a new drainer)."""
        if self._drainer is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer

    async def _drain(self) -> None:
        try:
            # One loop iteration first: the requests that are ready now join this batch.
            await asyncio.sleep(0)
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._one(batch)
                if not self._queue and self._on_idle is not None:
                    await self._on_idle()  # calls queued meanwhile go on in this loop
        finally:
            self._drainer = None

    async def _one(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._send([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):  # this item failed, the others did not
                future.set_exception(result)
            elif isinstance(result, asyncio.Future):  # known later: the waiter waits for it
                result.add_done_callback(functools.partial(_settle, future))
            else:
                future.set_result(result)


def _settle(waiter: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    if waiter.done():
        return
    if source.cancelled():
        waiter.cancel()
    elif (error := source.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(source.result())
