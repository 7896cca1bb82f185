"""The worker's FastStream subscriber on a real Kafka-protocol broker and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from aiokafka import TopicPartition

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.ids import command_aggregate_id, document_aggregate_id
from events.knowledge.commands import IngestDocument
from events.outcomes import CommandRejected, CommandSucceeded
from events.topics import command_topic
from infra.actors import operator_signer
from infra.publisher import CommandPublisher, headers_for
from infra.settings import Settings
from infra.stack import EmbeddedStack, eventsourcing_env
from tests.conftest import with_actor_keys
from uait.processes import prepare
from workers.main import build_worker
from workers.subscriber import group_id

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from infra.stack import Endpoints
    from workers.main import Worker

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A private broker for this module, so no other test's consumer joins our group."""
    base = with_actor_keys(
        Settings(database_url=endpoints.database_url, redis_url=endpoints.redis_url)
    )
    with EmbeddedStack(base, data_dir=tmp_path_factory.mktemp("kafka")) as ep:
        s = base.model_copy(
            update={
                "kafka_bootstrap": ep.kafka_bootstrap,
                "worker_session_timeout_ms": 3000,
                "worker_batch_size": 200,
            }
        )
        prepare(s)
        yield s


@pytest.fixture(scope="module")
async def worker(settings: Settings) -> AsyncIterator[Worker]:
    w = build_worker(
        settings,
        REGISTRY.contexts,
        kafka_bootstrap=settings.kafka_bootstrap,
        es_env=eventsourcing_env(settings.database_url),
    )
    await w.broker.start()
    try:
        yield w
    finally:
        await w.broker.stop()
        w.close()


@pytest.fixture(scope="module")
async def publisher(settings: Settings) -> AsyncIterator[CommandPublisher]:
    async with CommandPublisher(settings.kafka_bootstrap, signer=operator_signer(settings)) as p:
        yield p


async def wait_for_outcomes(worker: Worker, command_ids: list[uuid.UUID], timeout: float = 30):
    store = worker.stores["knowledge"]
    wanted = [command_aggregate_id(c) for c in command_ids]
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        done = await asyncio.to_thread(store.existing, wanted)
        if len(done) == len(wanted):
            return await asyncio.to_thread(store.load_streams, wanted)
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{len(done)}/{len(wanted)} outcomes after {timeout} s")
        await asyncio.sleep(0.1)


def ingest(text: str = "text") -> IngestDocument:
    return IngestDocument(document_id=f"doc-{uuid.uuid4().hex[:10]}", title="T", text=text)


async def test_published_commands_get_exactly_one_outcome_each(worker, publisher):
    envelopes = [await publisher.publish(ingest(), actor="t") for _ in range(25)]
    streams = await wait_for_outcomes(worker, [e.message_id for e in envelopes])
    for e in envelopes:
        [event] = streams[command_aggregate_id(e.message_id)]
        assert isinstance(event, CommandSucceeded)


async def test_the_same_command_published_twice_takes_effect_once(worker, publisher):
    command = ingest()
    assert publisher.signer is not None
    envelope = wrap(command, actor="t", actor_token=publisher.signer("t", command))
    topic = command_topic("knowledge")
    for _ in range(2):
        await publisher.send_raw(
            topic, dumps(envelope), command.document_id.encode(), headers_for(envelope)
        )
    follow_up = await publisher.publish(ingest(), actor="t")  # same partition order is not
    await wait_for_outcomes(worker, [envelope.message_id, follow_up.message_id])
    await asyncio.sleep(1.0)  # give the duplicate time to be consumed too
    store = worker.stores["knowledge"]
    streams = await asyncio.to_thread(
        store.load_streams,
        [command_aggregate_id(envelope.message_id), document_aggregate_id(command.document_id)],
    )
    assert len(streams[command_aggregate_id(envelope.message_id)]) == 1
    assert len(streams[document_aggregate_id(command.document_id)]) == 1


async def test_poison_in_a_partition_does_not_block_the_commands_behind_it(worker, publisher):
    key = f"doc-{uuid.uuid4().hex[:10]}"  # one key: one partition, in this order
    topic = command_topic("knowledge")
    await publisher.send_raw(topic, b"{definitely not json", key.encode())
    await publisher.send_raw(topic, b'{"type": "IngestDocument"}', key.encode())
    after = await publisher.publish(
        IngestDocument(document_id=key, title="T", text="behind the poison"), actor="t"
    )
    streams = await wait_for_outcomes(worker, [after.message_id])
    assert isinstance(streams[command_aggregate_id(after.message_id)][0], CommandSucceeded)


async def test_an_unknown_version_on_the_topic_is_rejected_with_its_reason(worker, publisher):
    envelope = wrap(ingest(), actor="t").model_copy(update={"version": 9})
    await publisher.send_raw(command_topic("knowledge"), dumps(envelope), b"k")
    streams = await wait_for_outcomes(worker, [envelope.message_id])
    [event] = streams[command_aggregate_id(envelope.message_id)]
    assert isinstance(event, CommandRejected)
    assert event.code == "unknown_type"
    assert "version 9" in event.reason


async def test_offsets_are_committed_once_the_batch_is_in_the_event_store(
    worker, publisher, settings
):
    envelopes = [await publisher.publish(ingest(), actor="t") for _ in range(10)]
    await wait_for_outcomes(worker, [e.message_id for e in envelopes])
    topic = command_topic("knowledge")
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        mine = await committed_offsets(
            settings.kafka_bootstrap, group_id("knowledge"), topic, settings.command_partitions
        )
        ends = await _end_offsets(settings.kafka_bootstrap, topic, settings.command_partitions)
        if mine == ends:
            break
        assert asyncio.get_running_loop().time() < deadline, (mine, ends)
        await asyncio.sleep(0.2)


async def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int
) -> dict[int, int]:
    """The group's committed offsets (OffsetFetch), without joining the group."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        return {
            p: (await consumer.committed(TopicPartition(topic, p))) or 0 for p in range(partitions)
        }
    finally:
        await consumer.stop()


async def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()
