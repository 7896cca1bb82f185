"""A transient failure of a whole batch: nothing is acknowledged, the batch comes back."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from eventsourcing.persistence import OperationalError
from faststream.kafka import KafkaBroker

from events.ids import command_aggregate_id
from events.knowledge.commands import IngestDocument
from events.outcomes import CommandSucceeded
from infra.eventstore import open_factory
from infra.publisher import CommandPublisher
from infra.settings import Settings
from infra.stack import EmbeddedStack, eventsourcing_env
from uait.processes import prepare
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.knowledge.handlers import KnowledgeDecider
from workers.subscriber import command_router

if TYPE_CHECKING:
    from collections.abc import Sequence

    from infra.stack import Endpoints
    from workers.items import BatchReport, Record

pytestmark = pytest.mark.integration


class FailingTwice(BatchProcessor):
    """The real processor, behind a database that is down for the first two batches."""

    calls = 0

    def process(self, records: Sequence[Record]) -> BatchReport:
        self.calls += 1
        if self.calls <= 2:
            raise OperationalError("connection refused (simulated outage)")
        return super().process(records)


async def test_a_batch_that_fails_transiently_is_redelivered_and_recorded_once(
    endpoints: Endpoints, tmp_path
):
    base = Settings(
        database_url=endpoints.database_url,
        redis_url=endpoints.redis_url,
        worker_session_timeout_ms=3000,
    )
    with EmbeddedStack(base, data_dir=tmp_path) as ep:
        settings = base.model_copy(update={"kafka_bootstrap": ep.kafka_bootstrap})
        await asyncio.to_thread(prepare, settings)
        factory = open_factory("knowledge", eventsourcing_env(settings.database_url))
        store = AggregateStore("knowledge", factory)
        processor = FailingTwice(
            store, KnowledgeDecider(max_text_bytes=10_000, chunk_size=200, chunk_overlap=20)
        )
        broker = KafkaBroker(settings.kafka_bootstrap)
        broker.include_router(command_router("knowledge", processor, settings))
        await broker.start()
        try:
            async with CommandPublisher(settings.kafka_bootstrap) as publisher:
                doc = f"retry-{uuid.uuid4().hex[:8]}"
                envelope = await publisher.publish(
                    IngestDocument(document_id=doc, title="T", text="survives an outage"),
                    actor="t",
                )
            outcome_id = command_aggregate_id(envelope.message_id)
            for _ in range(200):
                if await asyncio.to_thread(store.existing, [outcome_id]):
                    break
                await asyncio.sleep(0.1)
            streams = await asyncio.to_thread(store.load_streams, [outcome_id])
            assert processor.calls >= 3
            [outcome] = streams[outcome_id]
            assert isinstance(outcome, CommandSucceeded)
        finally:
            await broker.stop()
            factory.close()
