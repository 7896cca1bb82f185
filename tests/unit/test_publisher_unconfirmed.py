"""A send the broker never confirmed may still be delivered; a refused one was never sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from infra.publisher import BrokerUnavailableError, CommandPublisher


@dataclass(frozen=True)
class _Broker:
    nodeId: int  # aiokafka's name


@dataclass
class _Client:
    connectable: bool
    known: set[_Broker] = field(default_factory=lambda: {_Broker(1)})

    @property
    def cluster(self) -> _Client:
        return self

    def brokers(self) -> set[_Broker]:
        return self.known

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    async def ready(self, node_id: int) -> bool:
        return self.connectable


@dataclass
class _Builder:
    values: list[bytes] = field(default_factory=list)

    def append(self, *, value: bytes, **_: Any) -> SimpleNamespace:
        self.values.append(value)
        return SimpleNamespace(offset=len(self.values) - 1)


class _Producer:
    """Stands in for a started AIOKafkaProducer whose broker never acknowledges."""

    def __init__(self, connectable: bool) -> None:
        self.client = _Client(connectable)
        self.sent: list[bytes] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def create_batch(self) -> _Builder:
        return _Builder()

    async def send_batch(self, batch: _Builder, topic: str, **_: Any) -> asyncio.Future[None]:
        self.sent.extend(batch.values)
        return asyncio.get_running_loop().create_future()  # never acknowledged


def _publisher(producer: _Producer, timeout_s: float = 0.2) -> CommandPublisher:
    publisher = CommandPublisher("127.0.0.1:1", timeout_s=timeout_s)
    publisher._producer = producer  # type: ignore[assignment]
    return publisher


async def test_an_unacknowledged_send_is_reported_as_maybe_sent():
    producer = _Producer(connectable=True)
    with pytest.raises(BrokerUnavailableError) as caught:
        await _publisher(producer).send_raw("t", b"command", b"key")
    assert caught.value.maybe_sent
    assert producer.sent == [b"command"]


async def test_an_unreachable_broker_refuses_at_once_and_nothing_enters_the_buffer():
    producer = _Producer(connectable=False)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BrokerUnavailableError) as caught:
        await _publisher(producer, timeout_s=30).send_raw("t", b"command", b"key")
    assert not caught.value.maybe_sent
    assert producer.sent == []
    assert loop.time() - started < 5  # refused at once, not after the publish timeout


async def test_with_no_broker_known_yet_the_send_itself_decides():
    producer = _Producer(connectable=False)
    producer.client.known = set()
    with pytest.raises(BrokerUnavailableError) as caught:
        await _publisher(producer).send_raw("t", b"command", b"key")
    assert caught.value.maybe_sent
    assert producer.sent == [b"command"]
