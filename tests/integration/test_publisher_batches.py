"""The publisher's coalesced batches against the real broker: keys land where ``producer.send``
puts them, each key's records stay in order, and every caller learns its own offset."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from infra.publisher import CommandPublisher
from infra.topics import TopicSpec, ensure_topics

if TYPE_CHECKING:
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

PARTITIONS = 6


async def consume_all(bootstrap: str, topic: str, n: int) -> list[tuple[int, int, bytes, bytes]]:
    """(partition, offset, key, value) of the first ``n`` records of ``topic``."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        seen: list[tuple[int, int, bytes, bytes]] = []
        async with asyncio.timeout(60):
            while len(seen) < n:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen += [(r.partition, r.offset, r.key, r.value) for r in records]
        return seen
    finally:
        await consumer.stop()


async def test_concurrent_sends_keep_partitions_order_and_offsets(endpoints: Endpoints):
    bootstrap = endpoints.kafka_bootstrap
    topic = f"uait.test.batches.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, PARTITIONS, {})])
    keys = [f"aggregate-{i}".encode() for i in range(20)]
    records = [
        (keys[i % len(keys)], f"{i % len(keys)}:{i // len(keys)}".encode()) for i in range(400)
    ]
    async with CommandPublisher(bootstrap) as publisher:
        sent = await asyncio.gather(*(publisher.send_raw(topic, v, k) for k, v in records))
    # The same keys through aiokafka's own send: the partition it picks is the reference.
    reference = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await reference.start()
    try:
        placed = {k: (await (await reference.send(topic, b"ref", key=k))).partition for k in keys}
    finally:
        await reference.stop()

    stored = await consume_all(bootstrap, topic, len(records) + len(keys))
    by_value = {value: (partition, offset) for partition, offset, _, value in stored}
    for (key, value), meta in zip(records, sent, strict=True):
        assert (meta.topic, meta.partition, meta.offset) == (topic, *by_value[value])
        assert meta.partition == placed[key]
    order: dict[bytes, list[int]] = defaultdict(list)
    for _partition, _offset, key, value in sorted(stored, key=lambda r: (r[0], r[1])):
        if value != b"ref":
            order[key].append(int(value.split(b":")[1]))
    assert all(seq == sorted(seq) and len(seq) == 20 for seq in order.values())
    assert len(order) == len(keys)
    assert len({p for p, _, _, _ in stored}) > 1  # the keys were spread over partitions


async def test_a_record_larger_than_a_batch_goes_alone_and_the_small_ones_around_it_too(
    endpoints: Endpoints,
):
    bootstrap = endpoints.kafka_bootstrap
    topic = f"uait.test.batches.{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 1, {})])
    big = b"x" * (600 * 1024)  # far over the producer's 16 KiB batch size
    values = [b"small-1", big, b"small-2", b"small-3"]
    async with CommandPublisher(bootstrap) as publisher:
        sent = await asyncio.gather(*(publisher.send_raw(topic, v, b"one-key") for v in values))
    assert [s.offset for s in sent] == [0, 1, 2, 3]
    stored = await consume_all(bootstrap, topic, len(values))
    assert [value for _, _, _, value in sorted(stored)] == values
