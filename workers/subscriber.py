"""The command subscriber: one FastStream batch consumer per context, in a consumer group.

Ack policy: offsets are committed only after the batch's event-store transaction has committed
(NACK_ON_ERROR: a transient failure seeks back to the batch's first records, so nothing is
skipped). FastStream's Kafka default, ACK_FIRST, would commit before processing — at-most-once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

from faststream import AckPolicy, Context
from faststream.kafka import KafkaRouter
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, StatusCode

from events.topics import command_topic
from telemetry.metrics import (
    BATCH_DURATION,
    BATCH_FAILURES,
    BATCH_SIZE,
    BATCH_SPLITS,
    COMMANDS,
    CONSUMER_LAG,
    MESSAGES_CONSUMED,
)
from telemetry.tracing import extract, inject_headers, tracer, tracing_enabled
from workers.items import Record

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from faststream.kafka.message import KafkaMessage
    from opentelemetry.trace import Span

    from infra.cancel import CancelWatcher
    from infra.settings import Settings
    from workers.batch import BatchProcessor
    from workers.items import BatchReport
    from workers.retries import RetryDispatcher

log = logging.getLogger("uait.worker")


class Backoff:
    """Exponential backoff with full jitter, capped, for redelivering a failed batch."""

    def __init__(self, base_s: float = 0.2, cap_s: float = 10.0) -> None:
        self.base_s, self.cap_s, self.failures = base_s, cap_s, 0

    def failed(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap_s, self.base_s * 2**self.failures))  # noqa: S311

    def reset(self) -> None:
        self.failures = 0


def _process_span(record: ConsumerRecord[bytes, bytes], group: str) -> Span:
    """One span per message, a child of the producer's span (and linked to it)."""
    headers = {k: v.decode("latin-1") for k, v in (record.headers or ())}
    parent = extract(headers)
    producer = trace.get_current_span(parent).get_span_context()
    attributes: dict[str, str | int] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": record.topic,
        "messaging.destination.partition.id": str(record.partition),
        "messaging.kafka.offset": record.offset,
        "messaging.consumer.group.name": group,
    }
    if "message_id" in headers:
        attributes["messaging.message.id"] = headers["message_id"]
    if record.key is not None:
        attributes["messaging.kafka.message.key"] = record.key.decode("utf-8", "replace")
    return tracer().start_span(
        f"process {record.topic}",
        context=parent,
        kind=SpanKind.CONSUMER,
        links=[Link(producer)] if producer.is_valid else (),
        attributes=attributes,
    )


def traceparent(span: Span) -> str | None:
    return inject_headers(trace.set_span_in_context(span)).get("traceparent")


def _finish_spans(
    spans: list[Span], records: list[Record], processor: BatchProcessor, report: BatchReport
) -> None:
    """Close each message's span, with a child for the event-store append that recorded it."""
    table = processor.store.table
    for span, record in zip(spans, records, strict=True):
        if span.is_recording():
            command_id = processor.parse(record).command_id
            span.set_attribute("uait.command.id", str(command_id))
            span.set_attribute("uait.command.result", report.outcomes.get(command_id, "unknown"))
            if command_id in report.appends:
                start, end = report.appends[command_id]
                append = tracer().start_span(
                    f"append {table}",
                    context=trace.set_span_in_context(span),
                    kind=SpanKind.CLIENT,
                    start_time=start,
                    attributes={"db.system.name": "postgresql", "db.collection.name": table},
                )
                append.end(end_time=end)
        span.end()


_lag_series: dict[str, set[tuple[str, str]]] = {}


async def _observe_lag(message: KafkaMessage, group: str) -> None:
    """Lag of every partition this consumer holds: high watermark minus its position."""
    consumer = getattr(message, "consumer", None)
    if consumer is None:
        return
    held = {(tp.topic, str(tp.partition)) for tp in consumer.assignment()}
    # Partitions taken away by a rebalance: their lag is another worker's to report now.
    for gone in _lag_series.get(group, set()) - held:
        CONSUMER_LAG.remove(group, *gone)
    _lag_series[group] = held
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        position = await consumer.position(tp)
        CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(max(highwater - position, 0))


async def no_decoding(message: KafkaMessage) -> None:
    return None


def group_id(context: str) -> str:
    return f"uait.workers.{context}"


class DeferredWithoutRetryPathError(RuntimeError):
    """Raised when a batch defers commands but the subscriber has no retry path to send them."""


def to_records(
    consumed: tuple[ConsumerRecord[bytes, bytes], ...], group: str
) -> tuple[list[Span], list[Record]]:
    if tracing_enabled():
        spans = [_process_span(r, group) for r in consumed]
        records = [
            Record(
                r.topic,
                r.partition,
                r.offset,
                r.value,
                r.key,
                traceparent(span),
                tuple(r.headers or ()),
            )
            for r, span in zip(consumed, spans, strict=True)
        ]
        return spans, records
    # No per-record tracing work when spans go nowhere.
    records = [
        Record(r.topic, r.partition, r.offset, r.value, r.key, None, tuple(r.headers or ()))
        for r in consumed
    ]
    return [], records


def header_command_id(record: Record) -> uuid.UUID | None:
    raw = record.header("message_id")
    try:
        return uuid.UUID(raw.decode()) if raw else None
    except ValueError:
        return None


async def process_batch(
    processor: BatchProcessor,
    records: list[Record],
    dispatcher: RetryDispatcher | None,
    cancels: CancelWatcher | None,
) -> BatchReport:
    """Decide and commit a batch, then send its deferred commands on (all before the ack)."""
    if cancels is not None:
        await cancels.prime(c for r in records if (c := header_command_id(r)) is not None)
    # The event store client is synchronous: keep it off the event loop.
    report = await asyncio.to_thread(processor.process, records)
    if dispatcher is not None:
        await dispatcher.dispatch(report)
    elif report.deferred:
        raise DeferredWithoutRetryPathError(
            f"{len(report.deferred)} command(s) failed transiently and no retry path is set"
        )
    return report


def observe_report(context: str, report: BatchReport) -> None:
    BATCH_SPLITS.labels(context).inc(report.splits)
    for (command_type, result), n in report.by_type.items():
        COMMANDS.labels(context, command_type, result).inc(n)


Handler = TypeVar("Handler", bound=Callable[..., Awaitable[None]])


def batch_subscriber(
    router: KafkaRouter, topic: str, settings: Settings, **extra: Any
) -> Callable[[Handler], Handler]:
    """``router.subscriber`` as every command subscriber (command and retry topics) uses it."""
    return cast(
        "Callable[[Handler], Handler]",
        router.subscriber(topic, **batch_subscriber_options(settings), **extra),
    )


def batch_subscriber_options(settings: Settings) -> dict[str, Any]:
    return {
        "batch": True,
        "max_records": settings.worker_batch_size,
        "batch_timeout_ms": settings.worker_batch_timeout_ms,
        "auto_offset_reset": "earliest",
        "ack_policy": AckPolicy.NACK_ON_ERROR,
        "session_timeout_ms": settings.worker_session_timeout_ms,
        "fetch_max_wait_ms": settings.worker_fetch_max_wait_ms,
        "heartbeat_interval_ms": max(settings.worker_session_timeout_ms // 4, 500),
        "max_partition_fetch_bytes": max(settings.kafka_max_message_bytes * 2, 1024 * 1024),
        # Hand the records over untouched: the envelope parser decides what is malformed, and
        # nothing FastStream validates can turn a bad record into an endless redelivery.
        "decoder": no_decoding,
    }


def command_router(
    context: str,
    processor: BatchProcessor,
    settings: Settings,
    *,
    dispatcher: RetryDispatcher | None = None,
    cancels: CancelWatcher | None = None,
) -> KafkaRouter:
    router = KafkaRouter()
    backoff = Backoff()

    @batch_subscriber(router, command_topic(context), settings, group_id=group_id(context))
    async def handle_commands(message: KafkaMessage = Context("message")) -> None:
        raw = message.raw_message
        consumed = raw if isinstance(raw, tuple) else (raw,)
        spans, records = to_records(consumed, group_id(context))
        started = time.perf_counter()
        BATCH_SIZE.labels(context).observe(len(records))
        for r in records:
            MESSAGES_CONSUMED.labels(r.topic, str(r.partition)).inc()
        try:
            report = await process_batch(processor, records, dispatcher, cancels)
        except Exception as exc:
            for span in spans:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, "batch failed; redelivered")
                span.end()
            BATCH_DURATION.labels(context, "error").observe(time.perf_counter() - started)
            BATCH_FAILURES.labels(context).inc()
            # Transient (database down, a conflict that kept coming back): nothing of the batch
            # is acknowledged. Wait before the NACK redelivers it, so an outage is not a hot loop.
            delay = backoff.failed()
            log.exception(
                "%s: batch of %d failed; retrying in %.1f s", context, len(records), delay
            )
            await asyncio.sleep(delay)
            raise
        backoff.reset()
        if spans:
            _finish_spans(spans, records, processor, report)
        BATCH_DURATION.labels(context, "ok").observe(time.perf_counter() - started)
        observe_report(context, report)
        await _observe_lag(message, group_id(context))
        log.debug(
            "%s: %d records -> %d succeeded, %d rejected, %d duplicate, %d splits in %.1f ms",
            context,
            len(records),
            report.succeeded,
            report.rejected,
            report.duplicates,
            report.splits,
            (time.perf_counter() - started) * 1000,
        )

    return router
