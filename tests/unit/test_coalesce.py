"""Group commit: concurrent calls share a round trip, and each gets its own result or error."""

from __future__ import annotations

import asyncio

import pytest

from infra.coalesce import Coalescer


class _Server:
    """Answers each item with its double; records the batches it was sent."""

    def __init__(self, delay_s: float = 0.01) -> None:
        self.delay_s = delay_s
        self.batches: list[list[int]] = []

    async def send(self, items: list[int]) -> list[int | BaseException | asyncio.Future[int]]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay_s)
        return [item * 2 for item in items]


async def test_concurrent_calls_share_round_trips_and_get_their_own_results():
    server = _Server()
    coalescer = Coalescer(server.send)
    results = await asyncio.gather(*(coalescer(i) for i in range(100)))
    assert results == [i * 2 for i in range(100)]
    # The first call goes alone or with the ones of its loop iteration; the rest wait for it
    # and go together: far fewer round trips than calls, every item exactly once, in order.
    assert len(server.batches) <= 3
    assert [i for batch in server.batches for i in batch] == list(range(100))


async def test_a_call_alone_is_sent_at_once():
    server = _Server(delay_s=0)
    coalescer = Coalescer(server.send)
    assert await coalescer(21) == 42
    assert server.batches == [[21]]


async def test_batches_are_capped():
    server = _Server()
    coalescer = Coalescer(server.send, max_batch=10)
    await asyncio.gather(*(coalescer(i) for i in range(35)))
    assert max(len(batch) for batch in server.batches) <= 10
    assert sorted(i for batch in server.batches for i in batch) == list(range(35))


async def test_a_failed_round_trip_fails_every_waiter_of_that_batch_and_the_next_one_works():
    calls = 0

    async def flaky(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("server gone")
        return items

    coalescer = Coalescer(flaky)
    first = await asyncio.gather(*(coalescer(i) for i in range(5)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in first)
    assert await asyncio.gather(*(coalescer(i) for i in range(5))) == list(range(5))


async def test_an_item_can_fail_alone():
    async def picky(items: list[int]) -> list[int | BaseException]:
        return [ValueError(f"odd {i}") if i % 2 else i for i in items]

    coalescer = Coalescer(picky)
    results = await asyncio.gather(*(coalescer(i) for i in range(4)), return_exceptions=True)
    assert [results[0], results[2]] == [0, 2]
    assert [type(results[1]), type(results[3])] == [ValueError, ValueError]


async def test_a_result_known_later_is_awaited_through_its_future():
    loop = asyncio.get_running_loop()
    later: list[asyncio.Future[int]] = []

    async def deferred(items: list[int]) -> list[asyncio.Future[int]]:
        futures = [loop.create_future() for _ in items]
        later.extend(futures)
        return futures

    coalescer = Coalescer(deferred)
    waiting = asyncio.gather(*(coalescer(i) for i in range(3)), return_exceptions=True)
    await asyncio.sleep(0.01)
    assert not waiting.done()  # the batch was handed over; the results are not known yet
    later[0].set_result(10)
    later[1].set_exception(TimeoutError("no ack"))
    later[2].cancel()
    results = await waiting
    assert results[0] == 10
    assert isinstance(results[1], TimeoutError)
    assert isinstance(results[2], asyncio.CancelledError)


async def test_a_wrong_number_of_results_fails_the_batch_instead_of_mixing_answers():
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    coalescer = Coalescer(short)
    with pytest.raises(RuntimeError, match="results for a batch"):
        await asyncio.gather(coalescer(1), coalescer(2))


async def test_close_waits_for_what_is_queued():
    server = _Server()
    coalescer = Coalescer(server.send)
    pending = [asyncio.ensure_future(coalescer(i)) for i in range(3)]
    await asyncio.sleep(0)
    await coalescer.close()
    assert [i for batch in server.batches for i in batch] == [0, 1, 2]
    assert [await p for p in pending] == [0, 2, 4]


async def test_on_idle_runs_once_the_queue_runs_empty_not_between_busy_batches():
    events: list[tuple[str, int]] = []

    async def send(items: list[int]) -> list[int]:
        events.append(("batch", len(items)))
        await asyncio.sleep(0.01)
        return items

    async def idle() -> None:
        events.append(("idle", 0))

    coalescer = Coalescer(send, on_idle=idle)
    first = asyncio.ensure_future(coalescer(1))
    while not events:  # until the first batch is on the wire
        await asyncio.sleep(0)
    more = [asyncio.ensure_future(coalescer(i)) for i in range(2, 5)]
    assert await asyncio.gather(first, *more) == [1, 2, 3, 4]
    assert events == [("batch", 1), ("batch", 3), ("idle", 0)]
