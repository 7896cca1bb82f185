"""The event relay: public events, in store order, at least once, resuming where it stopped."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from eventsourcing.postgres import PostgresApplicationRecorder

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.knowledge.commands import DeleteDocument, IngestDocument
from events.topics import event_topic
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.settings import Settings
from infra.stack import EmbeddedStack, create_database, drop_database, eventsourcing_env
from projections.relay import BlockingProducer, EventRelay
from projections.runner import ProjectionRunner
from uait.processes import prepare
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.items import Record
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration
TOPIC = event_topic("knowledge")


@pytest.fixture(scope="module")
def world(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A private broker and database, so the topic holds only this module's events."""
    name = f"uait_relay_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    base = Settings(database_url=url, redis_url=endpoints.redis_url)
    with EmbeddedStack(base, data_dir=tmp_path_factory.mktemp("relay-kafka")) as ep:
        settings = base.model_copy(update={"kafka_bootstrap": ep.kafka_bootstrap})
        prepare(settings)
        factory = open_factory("knowledge", eventsourcing_env(url))
        try:
            yield settings, AggregateStore("knowledge", factory)
        finally:
            factory.close()
    drop_database(endpoints.database_url, name)


def write(store: AggregateStore, commands: list[Any]) -> None:
    processor = BatchProcessor(
        store, KnowledgeDecider(max_text_bytes=10_000, chunk_size=200, chunk_overlap=20)
    )
    records = [
        Record("t", 0, i, dumps(wrap(c, actor="test")), c.document_id.encode())
        for i, c in enumerate(commands)
    ]
    processor.process(records)


def relay_runner(settings: Settings, store: AggregateStore, producer: BlockingProducer):  # type: ignore[no-untyped-def]
    recorder = store.factory.application_recorder()
    assert isinstance(recorder, PostgresApplicationRecorder)
    return ProjectionRunner(
        EventRelay(producer, "knowledge", REGISTRY.context("knowledge").public_event_types),
        recorder,
        store.factory.tracking_recorder(),
        batch_size=7,
    )


def consume_all(bootstrap: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            TOPIC,
            bootstrap_servers=bootstrap,
            group_id=f"reader-{uuid.uuid4().hex}",
            auto_offset_reset="earliest",
            session_timeout_ms=2000,
        )
        await consumer.start()
        out = []
        try:
            idle = 0
            while idle < 3:
                batch = await consumer.getmany(timeout_ms=700)
                idle = 0 if batch else idle + 1
                for records in batch.values():
                    for r in records:
                        body = orjson.loads(r.value)
                        body["_partition"] = r.partition
                        body["_headers"] = dict(r.headers)
                        out.append(body)
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def test_public_events_are_relayed_in_store_order_once_and_resume_after_a_restart(world):
    settings, store = world
    docs = [f"r-{uuid.uuid4().hex[:6]}" for _ in range(5)]
    write(store, [IngestDocument(document_id=d, title="T", text=f"v1 {d}") for d in docs])
    write(
        store,
        [
            IngestDocument(document_id=docs[0], title="T", text="v2"),
            DeleteDocument(document_id=docs[1]),
        ],
    )
    producer = BlockingProducer(settings.kafka_bootstrap)
    try:
        assert relay_runner(settings, store, producer).catch_up() > 0
        # A new relay (a restart) resumes at the tracked position: nothing is sent twice.
        write(store, [IngestDocument(document_id=docs[2], title="T", text="v2")])
        assert relay_runner(settings, store, producer).catch_up() > 0
    finally:
        producer.close()
    events = consume_all(settings.kafka_bootstrap)
    assert [e["type"] for e in events].count("DocumentIngested") == 7
    assert [e["type"] for e in events].count("DocumentDeleted") == 1
    assert {e["type"] for e in events} <= {"DocumentIngested", "DocumentDeleted"}  # no outcomes
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was relayed twice"
    assert all(e["_headers"]["event_id"].decode() == e["event_id"] for e in events)
    # Store order holds per aggregate (one aggregate, one key, one partition).
    per_aggregate: dict[str, list[int]] = defaultdict(list)
    for e in events:
        per_aggregate[e["aggregate_id"]].append(e["position"])
    assert all(p == sorted(p) for p in per_aggregate.values())
    first = next(e for e in events if e["data"]["document_id"] == docs[0])
    assert first["data"]["version"] == 1
    assert first["meta"]["actor"] == "test"


def test_a_crash_between_publish_and_tracking_repeats_the_batch_with_the_same_event_ids(world):
    settings, store = world
    doc = f"crash-{uuid.uuid4().hex[:6]}"
    write(store, [IngestDocument(document_id=doc, title="T", text="once")])
    producer = BlockingProducer(settings.kafka_bootstrap)
    try:
        runner = relay_runner(settings, store, producer)
        tracking = runner.tracking

        def crash(*_: object) -> None:
            raise RuntimeError("process died before recording the position")

        real = tracking._insert_tracking
        tracking._insert_tracking = crash  # type: ignore[method-assign]
        with pytest.raises(RuntimeError):
            runner.run_batch()
        tracking._insert_tracking = real  # type: ignore[method-assign]
        relay_runner(settings, store, producer).catch_up()
    finally:
        producer.close()
    mine = [e for e in consume_all(settings.kafka_bootstrap) if e["data"].get("document_id") == doc]
    assert len(mine) == 2, "at-least-once: the unacknowledged batch is sent again"
    assert mine[0]["event_id"] == mine[1]["event_id"]
