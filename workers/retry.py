"""The retry-topic subscriber: runs each deferred command again once it is due.

A batch from ``uait.commands.<context>.retry`` is worked off in waves: each wave takes every
record that is due (or cancelled) and has no earlier record for the same aggregate still
waiting, decides them in one transaction, and sends the ones that fail again back to the retry
topic (or the DLQ). Records of other aggregates never wait for a record that is not due; the
batch's offsets are committed once all of it is done (consumer group ``...<context>.retry``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from faststream import Context
from faststream.kafka import KafkaRouter

from events.jobs import DUE_HEADER
from events.topics import command_topic, retry_topic
from telemetry.metrics import BATCH_DURATION, BATCH_FAILURES, MESSAGES_CONSUMED
from workers.subscriber import (
    Backoff,
    batch_subscriber,
    group_id,
    header_command_id,
    observe_report,
    process_batch,
    to_records,
)

if TYPE_CHECKING:
    from faststream.kafka.message import KafkaMessage

    from infra.cancel import CancelWatcher
    from infra.settings import Settings
    from workers.batch import BatchProcessor
    from workers.items import Record
    from workers.retries import RetryDispatcher

log = logging.getLogger("uait.worker")

_RECHECK_S = 0.5
"""While waiting for a record to come due, look for cancellations this often."""


def retry_group_id(context: str) -> str:
    return f"{group_id(context)}.retry"


def due_at(record: Record) -> float:
    """When a record may run, in seconds since the epoch (0: now)."""
    raw = record.header(DUE_HEADER)
    try:
        return datetime.fromisoformat(raw.decode()).timestamp() if raw else 0.0
    except ValueError:
        return 0.0


def next_wave(
    pending: list[Record], now: float, cancelled: set[int]
) -> tuple[list[Record], list[Record]]:
    """(records that may run now, records that wait), keeping per-aggregate order."""
    runnable: list[Record] = []
    waiting: list[Record] = []
    blocked: set[bytes] = set()
    for index, record in enumerate(pending):
        key = record.key
        if key is not None and key in blocked:
            waiting.append(record)
        elif due_at(record) <= now or index in cancelled:
            runnable.append(record)
        else:
            waiting.append(record)
            if key is not None:
                blocked.add(key)
    return runnable, waiting


async def run_due(
    context: str,
    records: list[Record],
    processor: BatchProcessor,
    dispatcher: RetryDispatcher,
    cancels: CancelWatcher | None,
) -> None:
    pending = list(records)
    while pending:
        if cancels is not None:
            await cancels.prime(c for r in pending if (c := header_command_id(r)) is not None)
        cancelled = {
            i
            for i, r in enumerate(pending)
            if cancels is not None
            and (c := header_command_id(r)) is not None
            and cancels.is_cancelled(c)
        }
        runnable, pending = next_wave(pending, time.time(), cancelled)
        if runnable:
            report = await process_batch(processor, runnable, dispatcher, cancels)
            observe_report(context, report)
            continue
        wake = min(due_at(r) for r in pending)
        await asyncio.sleep(min(max(wake - time.time(), 0.005), _RECHECK_S))


def retry_router(
    context: str,
    processor: BatchProcessor,
    settings: Settings,
    *,
    dispatcher: RetryDispatcher,
    cancels: CancelWatcher | None = None,
) -> KafkaRouter:
    router = KafkaRouter()
    backoff = Backoff()
    topic = retry_topic(command_topic(context))

    @batch_subscriber(
        router,
        topic,
        settings,
        group_id=retry_group_id(context),
        # A batch may wait for its last record's backoff (at most the policy's cap).
        max_poll_interval_ms=max(int(settings.retry_cap_s * 1000) * 2 + 60_000, 300_000),
    )
    async def handle_retries(message: KafkaMessage = Context("message")) -> None:
        raw = message.raw_message
        consumed = raw if isinstance(raw, tuple) else (raw,)
        spans, records = to_records(consumed, retry_group_id(context))
        for span in spans:
            span.end()
        for r in records:
            MESSAGES_CONSUMED.labels(r.topic, str(r.partition)).inc()
        started = time.perf_counter()
        try:
            await run_due(context, records, processor, dispatcher, cancels)
        except Exception:
            BATCH_DURATION.labels(context, "error").observe(time.perf_counter() - started)
            BATCH_FAILURES.labels(context).inc()
            delay = backoff.failed()
            log.exception(
                "%s: retry batch of %d failed; retrying in %.1f s", context, len(records), delay
            )
            await asyncio.sleep(delay)
            raise
        backoff.reset()
        BATCH_DURATION.labels(context, "ok").observe(time.perf_counter() - started)

    return router
