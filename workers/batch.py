"""Decide a batch of commands and save it in ONE event-store transaction.

Every command gets exactly one outcome: its events and its outcome record (version 1 of the
per-command aggregate) are appended together. A redelivered command conflicts on that record.
When an append fails on a conflict, the batch is split in halves and each half is decided again
from fresh state, so one duplicate or conflicting command never holds back the others.

A command whose decision fails transiently (``workers.jobs.TRANSIENT_ERRORS``) gets no outcome:
it is *deferred*, and the caller sends it to the retry topic. Its aggregate is parked behind it
(``workers.parking``): later commands for the same aggregate are deferred too, in order, until
it has its outcome, so the retry path never reorders one aggregate's commands.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

import orjson
from eventsourcing.persistence import IntegrityError, StoredEvent
from pydantic import ValidationError

from events.base import Command, Event, UnknownMessageTypeError
from events.envelope import (
    Envelope,
    MalformedEnvelopeError,
    describe_validation_error,
    loads,
    open_command,
)
from events.ids import COMMAND_NAMESPACE, command_aggregate_id
from events.outcomes import CommandRejected, CommandSucceeded, RejectionCode
from events.stored import DecodedEvent
from infra.eventstore import stored_event
from infra.runs import Adopted, Claim, run_row
from security.actors import ActorRejectedError
from telemetry import logs
from workers import jobs, snapshots
from workers.aggregate import Aggregate, DomainRuleError
from workers.decisions import RunStart
from workers.items import BatchReport, ConcurrencyConflictError, Deferral, Item, Record
from workers.parking import Queues
from workers.snapshots import Stream

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from infra.eventstore import Guarded
    from workers.aggregate_store import AggregateStore
    from workers.decisions import AggregateT, Decider, Streams
    from workers.parking import Parking

log = logging.getLogger("uait.worker")


class RunIntake(Protocol):
    """Where a batch's runs go (the context's run supervisor). Called from the batch's thread:
    ``reserve`` room for runs this worker then claims in the accepting transaction, ``adopt``
    them once it committed (``unreserve`` if it did not), ``wake`` the claim for the rest."""

    owner: str
    lease_s: float

    def reserve(self, n: int) -> int: ...

    def unreserve(self, n: int) -> None: ...

    def adopt(self, runs: list[Adopted]) -> None: ...

    def wake(self) -> None: ...


class _StreamCache:
    """The aggregates of one batch. Each decision sees the effects of the ones before it.

    ``begin`` starts a decision; ``get`` notes how many pending events an aggregate had when the
    decision first touched it, so ``recorded`` and ``rollback`` cost only what it touched.
    """

    def __init__(self, histories: Mapping[uuid.UUID, Stream]) -> None:
        self._histories = histories
        self._loaded: dict[uuid.UUID, Aggregate] = {}
        self._marks: dict[uuid.UUID, int] = {}

    def begin(self) -> None:
        self._marks = {}

    def get(self, aggregate_id: uuid.UUID, cls: type[AggregateT]) -> AggregateT:
        aggregate = self._loaded.get(aggregate_id)
        if aggregate is None:
            aggregate = self._history(aggregate_id).replay(aggregate_id, cls)
            self._loaded[aggregate_id] = aggregate
        assert isinstance(aggregate, cls)
        self._marks.setdefault(aggregate_id, len(aggregate.pending))
        return aggregate

    def recorded(self) -> list[tuple[uuid.UUID, int, Event]]:
        """The events recorded since ``begin``."""
        return [
            (aggregate_id, version, event)
            for aggregate_id, mark in self._marks.items()
            for version, event in self._loaded[aggregate_id].pending[mark:]
        ]

    def rollback(self) -> None:
        """Undo what was recorded since ``begin``: replay history and the events kept."""
        for aggregate_id, keep in self._marks.items():
            aggregate = self._loaded[aggregate_id]
            if len(aggregate.pending) == keep:
                continue
            fresh = self._history(aggregate_id).replay(aggregate_id, type(aggregate))
            for _, event in aggregate.pending[:keep]:
                fresh.record(event)
            self._loaded[aggregate_id] = fresh

    def _history(self, aggregate_id: uuid.UUID) -> Stream:
        return self._histories.get(aggregate_id) or Stream()

    def snapshots_due(self, every: Mapping[str, int]) -> list[StoredEvent]:
        """Snapshots of the aggregates this batch carries across a multiple of their interval."""
        if not every:
            return []
        return [
            snapshots.encode(a)
            for a in self._loaded.values()
            if snapshots.due(a, len(a.pending), every)
        ]


class BatchProcessor:
    def __init__(
        self,
        store: AggregateStore,
        decider: Decider,
        *,
        conflict_retries: int = 5,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_started: Callable[[list[Item]], None] | None = None,
        actors: Callable[[Envelope, Command], None] | None = None,
        parking: Parking | None = None,
        policies: jobs.Policies | None = None,
        is_cancelled: Callable[[uuid.UUID], bool] | None = None,
        runs: RunIntake | None = None,
    ) -> None:
        self.actors = actors
        """Raises ActorRejectedError for a command whose actor cannot be verified."""
        self.store = store
        self.decider = decider
        self._prepare: Callable[[list[Command], Streams], None] | None = getattr(
            decider, "prepare", None
        )
        """A decider's optional look at a whole batch before its decisions (``Preparing``)."""
        self.conflict_retries = conflict_retries
        self.clock = clock
        self.on_started = on_started
        self.parking = parking
        self.policies = policies
        self.is_cancelled = is_cancelled or (lambda _command_id: False)
        self.runs = runs
        """Where the runs a batch accepts go once it committed (from its thread)."""
        self._marker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mark-started")

    def process(self, records: Sequence[Record]) -> BatchReport:
        """Give every record its outcome; returns what happened. Raises only transient errors."""
        report = BatchReport()
        seen: set[uuid.UUID] = set()
        items: list[Item] = []
        for record in records:
            item = self.parse(record)
            if item.command_id in seen:  # the same command twice in one batch
                report.count(item, "duplicate")
                continue
            seen.add(item.command_id)
            items.append(item)
        # Marking them started is an UPSERT of its own: it runs on another connection while
        # this batch is decided, and the batch ends only once it has (its error is the batch's).
        started = (
            self._marker.submit(self.on_started, items) if self.on_started is not None else None
        )
        try:
            keys = sorted({item.key for item in items if item.key})
            queues = Queues(self.parking.heads(keys) if self.parking and keys else {})
            self._commit(items, report, queues)
        except BaseException:
            if started is not None:
                with contextlib.suppress(Exception):  # the batch's own error is the one to tell
                    started.result()
            if report.adopted and self.runs is not None:  # committed before the error: run them
                self.runs.adopt(report.adopted)
            raise
        if started is not None:
            started.result()
        if self.runs is not None:
            if report.adopted:
                self.runs.adopt(report.adopted)
            if len(report.runs) > len(report.adopted):
                self.runs.wake()
        return report

    def parse(self, record: Record) -> Item:
        raw = record.value or b""
        try:
            envelope = loads(raw)
        except MalformedEnvelopeError as exc:
            return Item(record, _salvage_id(record), rejection=("malformed", str(exc)))
        item = Item(record, envelope.message_id, envelope=envelope)
        try:
            command = open_command(envelope)
        except UnknownMessageTypeError as exc:
            item.rejection = ("unknown_type", str(exc))
            return item
        except ValidationError as exc:
            item.rejection = ("invalid", describe_validation_error(exc))
            return item
        if self.decider.context != command.CONTEXT:
            item.rejection = (
                "unknown_type",
                f"{envelope.type} belongs to {command.CONTEXT}, not {self.decider.context}",
            )
            return item
        if self.actors is not None:
            try:
                self.actors(envelope, command)
            except ActorRejectedError as exc:
                item.rejection = ("unauthorized", str(exc))
                return item
        item.command = command
        if self.policies is not None:
            item.policy = self.policies.resolve(envelope.type, dict(record.headers))
        return item

    def _commit(self, items: list[Item], report: BatchReport, queues: Queues) -> None:
        if not items:
            return
        try:
            attempt = queues.copy()
            report.merge(self._attempt(items, attempt))
            queues.keys = attempt.keys
        except IntegrityError:
            if len(items) == 1:
                report.merge(self._settle_single(items[0], queues))
                return
            report.splits += 1
            mid = len(items) // 2
            # Halves in order: per-aggregate order holds because the first half commits first.
            self._commit(items[:mid], report, queues)
            self._commit(items[mid:], report, queues)

    def _settle_single(self, item: Item, queues: Queues) -> BatchReport:
        """A lone command that conflicted: a duplicate, or a race with another writer."""
        for attempt in range(self.conflict_retries):
            try:
                work = queues.copy()
                report = self._attempt([item], work)
                queues.keys = work.keys
                return report
            except IntegrityError:
                log.info("conflict on %s (attempt %d), retrying", item.command_id, attempt + 1)
        raise ConcurrencyConflictError(f"command {item.command_id} kept conflicting")

    def _attempt(self, items: list[Item], queues: Queues) -> BatchReport:
        report = BatchReport()
        outcome_ids = {command_aggregate_id(i.command_id): i for i in items}
        done = self.store.existing(list(outcome_ids))
        fresh = [i for oid, i in outcome_ids.items() if oid not in done]
        for oid in done:
            report.count(outcome_ids[oid], "duplicate")
            self._release(outcome_ids[oid], queues, report)
        stream_ids = {sid for i in fresh if i.command for sid in self.decider.stream_ids(i.command)}
        streams = _StreamCache(self.store.load_latest(sorted(stream_ids)))
        if self._prepare is not None:
            self._prepare([i.command for i in fresh if i.command is not None], streams)
        now = self.clock()
        stored: list[StoredEvent] = []
        accepted: list[tuple[Item, RunStart, list[DecodedEvent]]] = []
        for item in fresh:
            behind = queues.blocking(item)
            if behind is not None and not self.is_cancelled(item.command_id):
                # Its aggregate waits for an earlier command in the retry path: follow it.
                queues.park(item)
                report.deferred.append(Deferral(item, now))
                report.by_type[(item.type, "deferred")] += 1
                continue
            decided = self._decide(item, streams)
            if isinstance(decided, Deferral):
                queues.park(item)
                report.deferred.append(decided)
                report.by_type[(item.type, "deferred")] += 1
                continue
            self._release(item, queues, report)
            outcome, events = decided
            meta = item.meta()
            for aggregate_id, version, event in events:
                stored.append(stored_event(aggregate_id, version, event, now, meta))
            if isinstance(outcome, RunStart):
                # Its outcome is the run's to record; the run row commits with its acceptance.
                history = [
                    DecodedEvent(event=event, occurred_at=now, meta=meta.as_dict())
                    for aggregate_id, _, event in events
                    if aggregate_id == outcome.run_id
                ]
                accepted.append((item, outcome, history))
                report.count(item, "accepted")
                continue
            stored.append(
                stored_event(command_aggregate_id(item.command_id), 1, outcome, now, meta)
            )
            report.count(item, "succeeded" if isinstance(outcome, CommandSucceeded) else "rejected")
        runs, adopted = self._run_rows(accepted, now)
        if stored or runs:
            started = time.time_ns()
            due = streams.snapshots_due(self.store.snapshot_every)
            if runs:
                try:
                    self._append_with_runs(stored, due, runs)
                except BaseException:
                    if self.runs is not None and adopted:
                        self.runs.unreserve(len(adopted))
                    raise
                report.adopted.extend(adopted)
            elif due:
                self.store.append(stored, due)
            else:
                self.store.append(stored)
            ended = time.time_ns()
            for item in fresh:
                if item.command_id in report.outcomes:  # not the deferred ones
                    report.appends[item.command_id] = (started, ended)
        report.appended_events = len(stored)
        return report

    def _run_rows(
        self, accepted: list[tuple[Item, RunStart, list[DecodedEvent]]], now: datetime
    ) -> tuple[list[Guarded], list[Adopted]]:
        """The run rows of the runs accepted, claimed by this worker for as many new ones as it
        has room for (a redelivered run, accepted before, is left to the claim)."""
        intake = self.runs
        new = [item.command_id for item, _, history in accepted if history]
        room = intake.reserve(len(new)) if intake is not None and new else 0
        claimed = set(new[:room])
        rows: list[Guarded] = []
        adopted: list[Adopted] = []
        for item, start, history in accepted:
            owner = intake.owner if intake is not None and item.command_id in claimed else None
            row = run_row(
                self.store.context,
                item.command_id,
                item.type,
                start.run_id,
                accepted_at=now,
                max_wall_s=start.max_wall_s,
                max_tokens=start.max_tokens,
                owner=owner,
                lease_s=intake.lease_s if intake is not None else 0.0,
            )
            rows.append(row)
            if owner is not None:
                deadline = now + timedelta(seconds=start.max_wall_s) if start.max_wall_s else None
                claim = Claim(
                    command_id=item.command_id,
                    run_id=start.run_id,
                    command_type=item.type,
                    attempt=1,
                    accepted_at=now,
                    deadline_at=deadline,
                    max_tokens=start.max_tokens,
                )
                adopted.append(Adopted(claim, history))
        return rows, adopted

    def _append_with_runs(
        self, stored: list[StoredEvent], due: list[StoredEvent], runs: list[Guarded]
    ) -> None:
        if stored:
            self.store.append(stored, due, guarded=runs)
            return
        # Only redelivered runs (accepted before, no new event): their rows, idempotently.
        with self.store.datastore.get_connection() as conn, conn.transaction():
            for row in runs:
                conn.execute(row.sql, row.params)

    @staticmethod
    def _release(item: Item, queues: Queues, report: BatchReport) -> None:
        if item.key is not None and queues.release(item):
            report.released.append((item.key, item.command_id))

    def _decide(
        self, item: Item, streams: _StreamCache
    ) -> tuple[Event | RunStart, list[tuple[uuid.UUID, int, Event]]] | Deferral:
        if item.rejection is not None or item.command is None:
            code, reason = item.rejection or ("invalid", "no command")
            return _rejected(item, code, reason), []
        if self.is_cancelled(item.command_id):  # still waiting, or in retry: never executed
            return _rejected(item, "cancelled", "cancelled on request"), []
        streams.begin()
        tokens = (
            logs.command_id.set(str(item.command_id)),
            logs.correlation_id.set(str(item.meta().correlation_id)),
        )
        job = jobs.enter(
            jobs.JobContext(
                command_id=item.command_id,
                policy=item.policy,
                attempt=item.failures + 1,
                is_cancelled=lambda: self.is_cancelled(item.command_id),
            )
        )
        try:
            verdict = self.decider.decide(item.command, streams)
        except DomainRuleError as exc:
            streams.rollback()
            return _rejected(item, exc.code, str(exc)), []
        except jobs.TRANSIENT_ERRORS as exc:
            streams.rollback()
            log.info("%s failed transiently: %r", item.command_id, exc)
            return Deferral(
                item,
                self.clock(),
                error_type=type(exc).__name__,
                error=str(exc) or type(exc).__name__,
                traceback="".join(traceback.format_exception(exc)),
            )
        except Exception as exc:
            # A bug in a decider must not stall the partition: reject, with a digest to find it.
            streams.rollback()
            digest = traceback.format_exception_only(type(exc), exc)[-1].strip()
            log.exception("decider failed on %s", item.command_id)
            return _rejected(item, "domain", f"internal error: {digest}"), []
        finally:
            jobs.leave(job)
            logs.command_id.reset(tokens[0])
            logs.correlation_id.reset(tokens[1])
        events = streams.recorded()
        if verdict.run is not None:
            return verdict.run, events
        succeeded = CommandSucceeded(
            command_id=str(item.command_id),
            command_type=item.type,
            aggregate_id=str(verdict.aggregate_id) if verdict.aggregate_id else None,
            detail=verdict.detail,
            events=[f"{e.TYPE}:{aid}:{v}" for aid, v, e in events],
        )
        return succeeded, events


def _rejected(item: Item, code: RejectionCode, reason: str) -> CommandRejected:
    return CommandRejected(
        command_id=str(item.command_id), command_type=item.type, code=code, reason=reason[:2000]
    )


def _salvage_id(record: Record) -> uuid.UUID:
    """The command id of a message too broken to be an envelope.

    Its own ``message_id`` when that much parses; otherwise derived from where it sits in Kafka,
    so a redelivery of the same broken record still maps to the same single outcome.
    """
    try:
        data = orjson.loads(record.value or b"")
        if isinstance(data, dict):
            return uuid.UUID(str(data["message_id"]))
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError):
        pass
    return uuid.uuid5(COMMAND_NAMESPACE, f"{record.topic}/{record.partition}/{record.offset}")
