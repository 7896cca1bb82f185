"""The event relay: public stored events, in store order, to ``uait.events.<context>``.

It runs on the projection runner, so it is tracked like a projection and resumes exactly where it
stopped: a batch is published and acknowledged (``acks=all``) before its position is recorded.
A crash in between publishes that batch again, so delivery is at-least-once; every record carries
its ``event_id`` (``<context>:<position>``) for consumers to drop the repeats.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from aiokafka import AIOKafkaProducer

from events.topics import event_topic

if TYPE_CHECKING:
    from psycopg import Cursor

    from projections.base import Envelope


Record = tuple[bytes, bytes, list[tuple[str, bytes]]]
"""key, value, headers"""


class BlockingProducer:
    """An aiokafka producer on a private event loop, for the runner's synchronous threads."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="relay")
        self._thread.start()

        async def start() -> AIOKafkaProducer:
            # Built on its own loop: aiokafka binds a producer to the loop it is created on.
            producer = AIOKafkaProducer(
                bootstrap_servers=bootstrap, acks="all", enable_idempotence=False, linger_ms=5
            )
            await producer.start()
            return producer

        self._producer: AIOKafkaProducer = self._call(start())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(self.timeout_s)

    def send_all(self, topic: str, records: list[Record]) -> None:
        """Send every record and wait until the broker has acknowledged all of them."""

        async def send() -> None:
            pending = [
                await self._producer.send(topic, value, key=key, headers=headers)
                for key, value, headers in records
            ]
            await asyncio.gather(*pending)

        self._call(send())

    def close(self) -> None:
        self._call(self._producer.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


class EventRelay:
    """A "projection" whose view is a Kafka topic: ``context``'s public events (``topics``)
    on ``uait.events.<context>``."""

    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ()

    def __init__(self, producer: BlockingProducer, context: str, topics: frozenset[str]) -> None:
        self.producer = producer
        self.context = context
        self.name = f"{context}.relay"
        self.topics = topics

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        return None

    def create_indexes(self, cur: Cursor[Any]) -> None:
        return None

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        self.producer.send_all(event_topic(self.context), [record(self.context, e) for e in batch])


def public_form(context: str, env: Envelope) -> dict[str, Any]:
    """A stored event as outside consumers see it (relay, replay, the HTTP event stream)."""
    return {
        "event_id": f"{context}:{env.position}",
        "position": env.position,
        "type": env.event.TYPE,
        "version": env.event.VERSION,
        "occurred_at": env.occurred_at,
        "aggregate_id": str(env.aggregate_id),
        "aggregate_version": env.aggregate_version,
        "meta": {k: v for k, v in env.meta.items() if k != "traceparent"},
        "data": env.event.model_dump(mode="json"),
    }


def record(context: str, env: Envelope) -> Record:
    """A stored event as a Kafka record: key = aggregate id, value = its public form."""
    event_id = f"{context}:{env.position}"
    value = orjson.dumps(public_form(context, env))
    headers = [("event_id", event_id.encode()), ("type", env.event.TYPE.encode())]
    if traceparent := env.meta.get("traceparent"):
        headers.append(("traceparent", str(traceparent).encode()))
    return str(env.aggregate_id).encode(), value, headers
