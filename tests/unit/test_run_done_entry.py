"""A run's ``done`` entry: the result a worker streams before recording it, and what a worker
that takes the run over records from it instead of running the handler again."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from events.inference.events import CompletionProduced
from infra.runs import Claim
from infra.runstreams import Entry
from workers.runs import DONE, RunContext, RunResult, RunSupervisor, _done_entry


class _Streams:
    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries

    async def history(self, command_id: uuid.UUID) -> list[Entry]:
        return self.entries


def _supervisor(entries: list[Entry]) -> RunSupervisor:
    store: Any = SimpleNamespace(datastore=None, context="inference")
    return RunSupervisor(
        store,
        handler=SimpleNamespace(command_types=frozenset()),  # type: ignore[arg-type]
        cancels=SimpleNamespace(is_cancelled=lambda _: False),  # type: ignore[arg-type]
        streams=_Streams(entries),  # type: ignore[arg-type]
        lease_s=30,
        poll_s=1,
        concurrency=4,
        handover_s=1,
    )


def _context(supervisor: RunSupervisor, attempt: int) -> RunContext:
    claim = Claim(
        command_id=uuid.uuid4(),
        run_id=uuid.uuid4(),
        command_type="RequestCompletion",
        attempt=attempt,
        accepted_at=datetime.now(UTC),
        deadline_at=None,
    )
    return RunContext(claim, [], supervisor)


RESULT = RunResult(
    events=[
        CompletionProduced(
            request_id="r1",
            model="tiny",
            text=" t0 t1",
            finish_reason="length",
            prompt_tokens=3,
            completion_tokens=2,
            endpoint="http://upstream",
            latency_ms=12.5,
            time_to_first_token_ms=4.0,
            attempts=1,
        )
    ],
    detail="length, 2 tokens",
    final={"text": " t0 t1", "finish_reason": "length", "usage": {"completion_tokens": 2}},
)


async def test_a_takeover_records_the_result_streamed_as_done_as_it_is() -> None:
    done = _done_entry(RESULT)
    assert done["final"] == {"status": "succeeded", **RESULT.final}
    entries = [Entry("1-0", "token", {"text": " t0"}), Entry("1-1", DONE, done)]
    supervisor = _supervisor(entries)
    again = await supervisor._done_before(_context(supervisor, attempt=2))
    assert again is not None
    assert again.events == RESULT.events
    assert (again.detail, again.final, again.rejected) == (RESULT.detail, RESULT.final, None)


async def test_without_a_done_entry_or_on_a_first_attempt_the_handler_runs() -> None:
    tokens_only = _supervisor([Entry("1-0", "token", {"text": " t0"})])
    assert await tokens_only._done_before(_context(tokens_only, attempt=2)) is None
    first = _supervisor([Entry("1-0", DONE, _done_entry(RESULT))])
    assert await first._done_before(_context(first, attempt=1)) is None
