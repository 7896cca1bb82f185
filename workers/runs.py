"""Long-running commands: runs driven from the store, not from the partition.

The batch worker accepts such a command durably (its acceptance event and a ``runs`` row in one
transaction) and moves on, so a 30-second generation never holds up the commands behind it.
Each worker's ``RunSupervisor`` claims runs (its own at once: in the very transaction that
accepts them when it has room, so that they start from what that transaction wrote; others'
once their lease has expired), executes them as asyncio tasks under a concurrency limit,
renews their leases, and records each one's outcome in one transaction fenced by the lease
(the outcomes of runs that end together share one): exactly one outcome per command, whichever
worker is killed when. A worker that takes a run over gives its handler the
run's history (step events) and what the earlier attempt streamed, so it resumes from there.

A run that succeeds streams its result (a ``done`` entry, with the events it will record) as
soon as it has it, then records it: a reader of the live stream is answered without waiting for
that transaction. A worker that takes over a run whose stream holds a ``done`` entry records
that result and calls nothing: what a reader was told is what is recorded.

On stop, the supervisor claims nothing more, lets runs finish for ``run_handover_s``, then stops
the rest between two steps and hands their leases back: another worker resumes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from eventsourcing.persistence import IntegrityError
from opentelemetry import trace

from events.base import Event, load
from events.ids import command_aggregate_id
from events.outcomes import CommandRejected, CommandSucceeded, RejectionCode
from events.stored import DecodedEvent, EventMeta
from infra.coalesce import Coalescer
from infra.eventstore import FenceError, Guarded, stored_event
from infra.runs import Adopted, Claim, RunLeases
from telemetry import logs
from telemetry.metrics import RUNS, RUNS_RUNNING
from telemetry.tracing import extract, tracer

if TYPE_CHECKING:
    from eventsourcing.persistence import StoredEvent

    from infra.cancel import CancelWatcher
    from infra.runstreams import Entry, RunStreams
    from workers.aggregate_store import AggregateStore

log = logging.getLogger("uait.runs")

StopReason = Literal["cancelled", "deadline", "budget", "handover", "lost"]


class RunLostError(RuntimeError):
    """Raised when this worker no longer holds a run's lease (another worker took it over)."""


@dataclass
class RunResult:
    """How a run ended: the events to record on its aggregate and the command's outcome."""

    events: list[Event]
    detail: str = ""
    rejected: RejectionCode | None = None
    """Set when the command failed (``cancelled``, ``deadline``, ``failed``...)."""
    final: dict[str, Any] = field(default_factory=dict)
    """What the live stream's final entry carries (the result as readers want it)."""


class RunHandler(Protocol):
    """A context's execution of its long-running commands."""

    @property
    def command_types(self) -> frozenset[str]: ...

    async def run(self, run: RunContext) -> RunResult: ...


def owner_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RunContext:
    """What a handler may ask and do while it runs one command."""

    def __init__(
        self,
        claim: Claim,
        history: list[DecodedEvent],
        supervisor: RunSupervisor,
    ) -> None:
        self.claim = claim
        self.history = history
        self._supervisor = supervisor
        self.stop: StopReason | None = None
        self._streamed: list[Entry] | None = None
        self.tokens = 0
        self.started = time.monotonic()
        first = history[0].meta if history else {}
        self.meta = EventMeta(
            command_id=claim.command_id,
            correlation_id=uuid.UUID(first.get("correlation_id", str(claim.command_id))),
            actor=first.get("actor", "unknown"),
            traceparent=first.get("traceparent"),
        )

    @property
    def command_id(self) -> uuid.UUID:
        return self.claim.command_id

    @property
    def events(self) -> list[Event]:
        return [d.event for d in self.history]

    def stop_reason(self) -> StopReason | None:
        """Why the run must stop now (None: go on). Cheap, and safe from any thread."""
        if self.stop is not None:
            return self.stop
        if self._supervisor.cancels.is_cancelled(self.claim.command_id):
            self.stop = "cancelled"
        elif self.claim.deadline_at is not None and datetime.now(UTC) >= self.claim.deadline_at:
            self.stop = "deadline"
        return self.stop

    def spend(self, tokens: int) -> None:
        """Count tokens against the run's budget; past it, the run stops (``budget``)."""
        self.tokens += tokens
        if self.claim.max_tokens is not None and self.tokens > self.claim.max_tokens:
            self.stop = self.stop or "budget"

    async def emit(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Append to the run's live stream (lost when Redis is down: the result is not)."""
        streams = self._supervisor.streams
        if streams is None or not entries:
            return
        # Group-committed with every other run's entries; a Redis outage is logged by the
        # writer: readers miss tokens, the outcome still lands.
        await streams.append(self.claim.command_id, entries)

    async def streamed(self) -> list[Entry]:
        """What earlier attempts of this run streamed (empty on its first attempt), read once."""
        streams = self._supervisor.streams
        if streams is None or self.claim.attempt <= 1:
            return []
        if self._streamed is None:
            self._streamed = await streams.history(self.claim.command_id)
        return self._streamed

    async def record_step(self, events: list[Event]) -> None:
        """Record coarse steps on the run's aggregate now (fenced by the lease)."""
        await self._supervisor.record(self, events, outcome=None)


@dataclass
class _Running:
    task: asyncio.Task[None]
    context: RunContext


class RunSupervisor:
    def __init__(
        self,
        store: AggregateStore,
        handler: RunHandler,
        *,
        cancels: CancelWatcher,
        streams: RunStreams | None,
        lease_s: float,
        poll_s: float,
        concurrency: int,
        handover_s: float,
        owner: str | None = None,
    ) -> None:
        self.store = store
        self.handler = handler
        self.cancels = cancels
        self.streams = streams
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.handover_s = handover_s
        self.owner = owner or owner_id()
        self.leases = RunLeases(store.datastore, store.context, self.owner)
        self.running: dict[uuid.UUID, _Running] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[None]] = set()
        """Every run task, from its claim to its end (``running`` has those that loaded)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._appends: Coalescer[_Append, None] = Coalescer(self._append_batch, max_batch=256)
        self._reserved = 0
        """Room promised to batches for runs they accept (``reserve``), until adopted."""
        self._room = threading.Lock()

    @property
    def context(self) -> str:
        return self.store.context

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name=f"runs-claim-{self.context}"),
            asyncio.create_task(self._renew_loop(), name=f"runs-renew-{self.context}"),
        ]

    def wake(self) -> None:
        """New runs were accepted (callable from any thread): claim them now."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    def reserve(self, n: int) -> int:
        """Room for up to ``n`` runs a batch is accepting, which it claims for this worker in
        its transaction (from the batch's thread); 0 when stopping or full."""
        with self._room:
            if self._stopping or self._loop is None:
                return 0
            free = self.concurrency - len(self._inflight) - self._reserved
            taken = max(0, min(n, free))
            self._reserved += taken
            return taken

    def unreserve(self, n: int) -> None:
        """The batch that reserved ``n`` did not commit."""
        with self._room:
            self._reserved -= n

    def adopt(self, runs: list[Adopted]) -> None:
        """Start runs a batch claimed for this worker as it accepted them, once it committed
        (from the batch's thread): no claim, no load, their history is what it wrote."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # the leases expire; any worker takes them over
        loop.call_soon_threadsafe(self._adopt, runs)

    def _adopt(self, runs: list[Adopted]) -> None:
        with self._room:
            self._reserved -= len(runs)
        if self._stopping:
            ids = [r.claim.command_id for r in runs]
            task = asyncio.create_task(asyncio.to_thread(self.leases.release, ids))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
            return
        for run in runs:
            self._start(run.claim, run.history)

    async def stop(self) -> None:
        """Claim nothing more; let runs finish for ``handover_s``; hand the rest back."""
        self._stopping = True
        self._wake.set()
        pending = list(self._inflight)
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.handover_s)
        else:
            late = set()
        handed = [cid for cid, r in self.running.items() if r.task in late]
        for cid in handed:
            self.running[cid].context.stop = "handover"
        if late:
            await asyncio.wait(late, timeout=5.0)
        for task in self._tasks:
            task.cancel()
        if handed:
            if self.streams is not None:
                await self.streams.drain()  # the next worker continues after all of it
            await asyncio.to_thread(self.leases.release, handed)
            log.info("handed %d run(s) of %s back", len(handed), self.context)
        for r in list(self.running.values()):
            r.task.cancel()

    async def _claim_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._claim()
            except Exception:
                log.exception("runs of %s: claiming failed; retrying", self.context)
                await asyncio.sleep(self.poll_s)

    async def _claim(self) -> None:
        with self._room:
            free = self.concurrency - len(self._inflight) - self._reserved
        if free <= 0:
            return
        claims = await asyncio.to_thread(self.leases.claim, free, self.lease_s)
        if not claims:
            return
        await self.cancels.prime([c.command_id for c in claims])
        histories = await asyncio.to_thread(
            self.store.load_decoded_many, [c.run_id for c in claims]
        )
        for claim in claims:
            self._start(claim, histories.get(claim.run_id, []))
        if len(claims) == free:
            self._wake.set()  # maybe more waiting

    def _start(self, claim: Claim, history: list[DecodedEvent]) -> None:
        run = self._execute(claim, history)
        task = asyncio.create_task(run, name=f"run-{claim.command_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            ids = list(self.running)
            if not ids:
                continue
            try:
                held = await asyncio.to_thread(self.leases.renew, ids, self.lease_s)
            except Exception as exc:
                log.warning("runs of %s: renewing leases failed: %s", self.context, exc)
                continue
            for cid in ids:
                if cid not in held and cid in self.running:
                    log.warning("run %s: lease lost; stopping it here", cid)
                    self.running[cid].context.stop = "lost"

    async def _execute(self, claim: Claim, history: list[DecodedEvent]) -> None:
        tokens = (logs.command_id.set(str(claim.command_id)),)
        context = RunContext(claim, history, self)
        self.running[claim.command_id] = _Running(asyncio.current_task(), context)  # type: ignore[arg-type]
        RUNS_RUNNING.labels(self.context).set(len(self.running))
        try:
            if claim.attempt > 1:
                log.info("run %s: resuming (attempt %d)", claim.command_id, claim.attempt)
            parent = extract({"traceparent": context.meta.traceparent or ""})
            span = tracer().start_span(
                f"run {claim.command_type}",
                context=parent,
                attributes={
                    "uait.command.id": str(claim.command_id),
                    "uait.run.attempt": claim.attempt,
                    "uait.context": self.context,
                },
            )
            recovered: RunResult | None = None
            try:
                with trace.use_span(span, end_on_exit=True):
                    recovered = await self._done_before(context)
                    result = recovered or await self.handler.run(context)
            except RunLostError:
                return
            except Exception as exc:
                if context.stop in ("handover", "lost"):
                    return
                log.exception("run %s failed", claim.command_id)
                result = RunResult(
                    events=[],
                    rejected="failed",
                    detail=f"internal error: {type(exc).__name__}: {exc}"[:2000],
                    final={"error": {"message": str(exc)[:500], "type": type(exc).__name__}},
                )
            if context.stop in ("handover", "lost"):
                return  # not ours to finish
            if self.streams is not None and result.rejected is None and recovered is None:
                # Readers have the result now; the record follows (and is what they were told,
                # even if this worker dies before it: see ``_done_before``).
                self.streams.enqueue(claim.command_id, [(DONE, _done_entry(result))])
            with contextlib.suppress(RunLostError):
                await self.record(context, result.events, outcome=result)
                RUNS.labels(self.context, result.rejected or "succeeded").inc()
        finally:
            self.running.pop(claim.command_id, None)
            RUNS_RUNNING.labels(self.context).set(len(self.running))
            logs.command_id.reset(tokens[0])
            self._wake.set()

    async def record(
        self, context: RunContext, events: list[Event], *, outcome: RunResult | None
    ) -> None:
        """Append events to the run's aggregate (and, with ``outcome``, the command's outcome
        and the run row's end), fenced by this worker's lease."""
        claim = context.claim
        now = datetime.now(UTC)
        version = len(context.history)
        stored = []
        for event in events:
            version += 1
            stored.append(stored_event(claim.run_id, version, event, now, context.meta))
        guarded = []
        if outcome is not None:
            final_event: Event
            if outcome.rejected is None:
                final_event = CommandSucceeded(
                    command_id=str(claim.command_id),
                    command_type=claim.command_type,
                    aggregate_id=str(claim.run_id),
                    detail=outcome.detail,
                    events=[f"{e.TYPE}:{claim.run_id}:{v}" for v, e in _versions(context, events)],
                )
            else:
                final_event = CommandRejected(
                    command_id=str(claim.command_id),
                    command_type=claim.command_type,
                    code=outcome.rejected,
                    reason=outcome.detail[:2000] or outcome.rejected,
                )
            stored.append(
                stored_event(
                    command_aggregate_id(claim.command_id), 1, final_event, now, context.meta
                )
            )
            guarded.append(claim.done_row(self.owner))
        else:
            guarded.append(_lease_held(claim, self.owner))
        try:
            await self._appends(_Append(stored, guarded))
        except (FenceError, IntegrityError) as exc:
            context.stop = "lost"
            log.warning("run %s: not recorded, another worker holds it (%s)", claim.command_id, exc)
            raise RunLostError(str(claim.command_id)) from exc
        context.history.extend(
            DecodedEvent(event=e, occurred_at=now, meta=context.meta.as_dict()) for e in events
        )
        if outcome is not None and self.streams is not None:
            try:
                await self.streams.finish(claim.command_id, _final(outcome))
            except Exception as exc:
                log.warning("run %s: final stream entry not written: %s", claim.command_id, exc)

    async def _done_before(self, context: RunContext) -> RunResult | None:
        """The result an earlier attempt streamed as ``done`` but did not record (it died in
        between), to record as it is; None when there is none."""
        if self.streams is None or context.claim.attempt <= 1:
            return None
        done = next((e for e in await context.streamed() if e.kind == DONE), None)
        if done is None:
            return None
        log.info("run %s: recording the result an earlier attempt streamed", context.command_id)
        events = []
        for raw in done.data.get("events", ()):
            event = load(raw["type"], int(raw["v"]), raw["data"])
            assert isinstance(event, Event), raw["type"]
            events.append(event)
        final = {k: v for k, v in done.data.get("final", {}).items() if k != "status"}
        return RunResult(events=events, detail=str(done.data.get("detail", "")), final=final)

    async def _append_batch(self, items: list[_Append]) -> list[BaseException | None]:
        """The records of every run that queued meanwhile, in one transaction (they would take
        the events table's lock one after the other anyway); when that one is refused, each
        record goes alone, so that only the runs this worker lost are refused."""
        events = [e for item in items for e in item.events]
        guarded = [g for item in items for g in item.guarded]
        try:
            await asyncio.to_thread(self.store.append, events, (), guarded)
        except (FenceError, IntegrityError) as exc:
            if len(items) == 1:
                return [exc]
            return await asyncio.to_thread(self._append_each, items)
        return [None] * len(items)

    def _append_each(self, items: list[_Append]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for item in items:
            try:
                self.store.append(item.events, (), item.guarded)
            except (FenceError, IntegrityError) as exc:
                results.append(exc)
            else:
                results.append(None)
        return results


@dataclass(frozen=True)
class _Append:
    """One run's record: its events and the statements that fence them."""

    events: list[StoredEvent]
    guarded: list[Guarded]


DONE = "done"
"""The live-stream entry of a run's result before it is recorded."""


def _final(outcome: RunResult) -> dict[str, Any]:
    """What the final entry (and a ``done`` one) tells readers of the outcome."""
    final = {"status": "failed" if outcome.rejected else "succeeded", **outcome.final}
    if outcome.rejected:
        final.setdefault("code", outcome.rejected)
        final.setdefault("reason", outcome.detail)
    return final


def _done_entry(result: RunResult) -> dict[str, Any]:
    """The ``done`` entry: what readers are told, and what a worker taking over records."""
    events = [
        {"type": e.TYPE, "v": e.VERSION, "data": e.model_dump(mode="json")} for e in result.events
    ]
    return {"final": _final(result), "detail": result.detail, "events": events}


def _versions(context: RunContext, events: list[Event]) -> list[tuple[int, Event]]:
    start = len(context.history)
    return [(start + i + 1, e) for i, e in enumerate(events)]


def _lease_held(claim: Claim, owner: str) -> Guarded:
    return Guarded(
        "SELECT 1 FROM runs WHERE command_id = %s AND owner = %s AND attempts = %s"
        " AND state = 'running' FOR UPDATE",
        (claim.command_id, owner, claim.attempt),
        expect_rows=1,
    )
