"""The command subscriber: one FastStream batch consumer per context, in a consumer group.

Ack policy: offsets are committed only after the batch's event-store transaction has committed
(NACK_ON_ERROR: a transient failure seeks back to the batch's first records, so nothing is
skipped). FastStream's Kafka default, ACK_FIRST, would commit before processing — at-most-once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from faststream import AckPolicy, Context
from faststream.kafka import KafkaRouter

from events.topics import command_topic
from workers.batch import Record

if TYPE_CHECKING:
    from faststream.kafka.message import KafkaMessage

    from infra.settings import Settings
    from workers.batch import BatchProcessor

log = logging.getLogger("uait.worker")


async def _no_decoding(message: KafkaMessage) -> None:
    return None


def group_id(context: str) -> str:
    return f"uait.workers.{context}"


def command_router(context: str, processor: BatchProcessor, settings: Settings) -> KafkaRouter:
    router = KafkaRouter()

    @router.subscriber(
        command_topic(context),
        group_id=group_id(context),
        batch=True,
        max_records=settings.worker_batch_size,
        batch_timeout_ms=settings.worker_batch_timeout_ms,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=settings.worker_session_timeout_ms,
        heartbeat_interval_ms=max(settings.worker_session_timeout_ms // 4, 500),
        max_partition_fetch_bytes=max(settings.kafka_max_message_bytes * 2, 1024 * 1024),
        # Hand the records over untouched: the envelope parser decides what is malformed, and
        # nothing FastStream validates can turn a bad record into an endless redelivery.
        decoder=_no_decoding,
    )
    async def handle_commands(message: KafkaMessage = Context("message")) -> None:
        raw = message.raw_message
        records = [
            Record(r.topic, r.partition, r.offset, r.value, r.key)
            for r in (raw if isinstance(raw, tuple) else (raw,))
        ]
        started = time.perf_counter()
        # The event store client is synchronous: keep it off the event loop.
        report = await asyncio.to_thread(processor.process, records)
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
