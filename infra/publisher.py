"""Publish commands to Kafka: the Python producer API, used by the ingress, the CLI and benches.

Example::

    from infra.publisher import CommandPublisher
    from events.knowledge.commands import IngestDocument

    async with CommandPublisher("localhost:9092") as publisher:
        envelope = await publisher.publish(
            IngestDocument(document_id="handbook", title="Handbook", text="..."),
            actor="service:importer",
        )
        print(envelope.message_id)  # the command id: GET /v1/commands/{id}

Every record is keyed by the command's aggregate (``partition_key``), so commands for one
aggregate stay in order, and is acknowledged by all in-sync replicas (``acks=all``) before
``publish`` returns. A broker that does not answer within ``timeout_s`` raises
``BrokerUnavailableError`` instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, NamedTuple, Self, cast

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind

from events.envelope import Envelope, dumps, wrap
from events.topics import command_topic
from infra.coalesce import Coalescer
from telemetry.metrics import MESSAGES_PUBLISHED, PUBLISH_DURATION, Children
from telemetry.tracing import current_traceparent, extract, tracer, tracing_enabled

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Sequence

    from events.base import Command


Record = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
"""(topic, key, value, headers) of one record to send."""


MESSAGES_PUBLISHED_OF = Children(MESSAGES_PUBLISHED)
PUBLISH_DURATION_OF = Children(PUBLISH_DURATION)


class Sent(NamedTuple):
    """Where a record was stored (the fields of aiokafka's RecordMetadata that say so)."""

    topic: str
    partition: int
    offset: int


Acked = asyncio.Future[Sent]


class BrokerUnavailableError(RuntimeError):
    """Raised when the broker cannot take a command in time; the caller may retry later.

    ``maybe_sent``: the message had entered the producer's buffer (or was in flight) when the
    wait ran out, so it may still be delivered once the broker answers again; otherwise it was
    certainly not sent.
    """

    def __init__(self, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class MessageTooLargeError(ValueError):
    """Raised when an envelope is over the broker's message size limit."""


def headers_for(envelope: Envelope) -> list[tuple[str, bytes]]:
    headers = [
        ("message_id", str(envelope.message_id).encode()),
        ("type", envelope.type.encode()),
        ("version", str(envelope.version).encode()),
        ("correlation_id", str(envelope.correlation_id).encode()),
    ]
    if envelope.traceparent:
        headers.append(("traceparent", envelope.traceparent.encode()))
    return headers


class CommandPublisher:
    def __init__(
        self,
        bootstrap: str,
        *,
        timeout_s: float = 5.0,
        max_message_bytes: int = 1024 * 1024,
        linger_ms: int = 0,
        signer: Callable[[str, Command], str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.signer = signer
        """(actor, command) -> the actor token for the command's envelope."""
        self.timeout_s = timeout_s
        self.max_message_bytes = max_message_bytes
        self._linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._partitioner = DefaultPartitioner()
        self._records: Coalescer[Record, Sent] = Coalescer(self._enqueue)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect; raises BrokerUnavailableError if the broker does not answer in time."""
        await self._ensure()

    async def stop(self) -> None:
        await self._records.close()  # what is queued is handed over first
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def _ensure(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self.bootstrap,
                    acks="all",
                    # The dev broker has no idempotent producer; duplicates on the topic are
                    # harmless because every command has exactly one outcome record.
                    enable_idempotence=False,
                    max_request_size=self.max_message_bytes,
                    request_timeout_ms=int(self.timeout_s * 1000),
                    linger_ms=self._linger_ms,
                )
                try:
                    await asyncio.wait_for(producer.start(), self.timeout_s)
                except (TimeoutError, KafkaError, OSError) as exc:
                    await _quietly_stop(producer)
                    raise BrokerUnavailableError(f"Kafka at {self.bootstrap}: {exc!r}") from exc
                self._producer = producer
        assert self._producer is not None
        return self._producer

    async def _enqueue(self, records: list[Record]) -> list[Acked | BaseException]:
        """Hand the records to the producer as one batch per partition; each record's result
        is a future of its acknowledgement (``send_raw`` queues them and awaits that).

        Building a batch and handing it over whole costs far less per record than one
        ``producer.send`` each. Partitions are chosen as ``producer.send`` chooses them, so a
        key lands where the other producers of the system put it. The next records are
        enqueued while these wait for their acks: the producer sends one batch per partition
        at a time, in the order enqueued, so a key's records stay in order.
        """
        producer = await self._ensure()
        if not await _reachable(producer):
            return [
                BrokerUnavailableError(f"no broker of {self.bootstrap} is reachable")
                for _ in records
            ]
        loop = asyncio.get_running_loop()
        results: list[Acked | BaseException] = [loop.create_future() for _ in records]
        by_partition: dict[tuple[str, int], list[int]] = {}
        partitions: dict[str, tuple[list[int], list[int]]] = {}
        for i, (topic, key, _value, _headers) in enumerate(records):
            if topic not in partitions:
                known = list(await producer.partitions_for(topic))
                available = list(producer.client.cluster.available_partitions_for_topic(topic))
                partitions[topic] = (known, available)
            partition = self._partitioner(key, *partitions[topic])
            by_partition.setdefault((topic, partition), []).append(i)
        for (topic, partition), indexes in by_partition.items():
            builder, members = producer.create_batch(), list[tuple[Acked, int]]()
            for i in indexes:
                _topic, key, value, headers = records[i]
                appended = builder.append(timestamp=None, key=key, value=value, headers=headers)
                if appended is None and members:  # full: send it, go on in a new one
                    _settle(await producer.send_batch(builder, topic, partition=partition), members)
                    builder, members = producer.create_batch(), []
                    appended = builder.append(timestamp=None, key=key, value=value, headers=headers)
                if appended is None:
                    results[i] = MessageTooLargeError("the record does not fit in a batch")
                    continue
                members.append((cast("Acked", results[i]), appended.offset))
            if members:
                _settle(await producer.send_batch(builder, topic, partition=partition), members)
        return results

    async def publish(
        self,
        command: Command,
        *,
        actor: str,
        correlation_id: uuid.UUID | None = None,
        causation_id: uuid.UUID | None = None,
        traceparent: str | None = None,
        message_id: uuid.UUID | None = None,
    ) -> Envelope:
        """Publish a command; a ``traceparent`` given here is the parent of the produce span.

        With a ``signer``, the envelope carries the actor token it issues for ``actor``.
        """
        topic = command_topic(command.CONTEXT)
        parent = extract({"traceparent": traceparent}) if traceparent else None
        spans: contextlib.AbstractContextManager[Span] = (
            tracer().start_as_current_span(
                f"send {topic}",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": topic,
                    "messaging.kafka.message.key": command.partition_key(),
                },
            )
            if tracing_enabled()
            else contextlib.nullcontext(INVALID_SPAN)  # no exporter: skip the span's cost
        )
        with spans as span:
            envelope = wrap(
                command,
                actor=actor,
                correlation_id=correlation_id,
                causation_id=causation_id,
                # The consumer's span becomes a child of this one.
                traceparent=current_traceparent() or traceparent,
                message_id=message_id,
                actor_token=self.signer(actor, command) if self.signer is not None else None,
            )
            span.set_attribute("messaging.message.id", str(envelope.message_id))
            metadata = await self.send_raw(
                topic, dumps(envelope), command.partition_key().encode(), headers_for(envelope)
            )
            if metadata is not None:
                span.set_attribute("messaging.destination.partition.id", str(metadata.partition))
                span.set_attribute("messaging.kafka.offset", metadata.offset)
        return envelope

    async def send_raw(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Any:
        """Send bytes as they are and wait for ``acks=all``; returns the record metadata."""
        if len(value) > self.max_message_bytes:
            MESSAGES_PUBLISHED_OF(topic, "too_large").inc()
            raise MessageTooLargeError(
                f"message is {len(value)} bytes; the broker limit is {self.max_message_bytes}"
            )
        started = time.perf_counter()
        sending = False
        try:
            await self._ensure()  # a broker that cannot be reached: certainly not sent
            async with asyncio.timeout(self.timeout_s):
                sending = True  # from here on it may be sent, even if the wait runs out
                metadata = await self._records((topic, key, value, list(headers)))
        except (TimeoutError, KafkaError, OSError, BrokerUnavailableError) as exc:
            MESSAGES_PUBLISHED_OF(topic, "error").inc()
            if isinstance(exc, BrokerUnavailableError):
                raise
            raise BrokerUnavailableError(
                f"publish to {topic} failed: {exc!r}", maybe_sent=sending
            ) from exc
        MESSAGES_PUBLISHED_OF(topic, "ok").inc()
        PUBLISH_DURATION_OF(topic).observe(time.perf_counter() - started)
        return metadata


def _settle(batch: asyncio.Future[Any], members: list[tuple[Acked, int]]) -> None:
    """When ``batch`` is acknowledged (or fails), so is each of its records."""

    def done(future: asyncio.Future[Any]) -> None:
        error = None if future.cancelled() else future.exception()
        for acked, relative in members:
            if acked.done():
                continue
            if future.cancelled():
                acked.cancel()
            elif error is not None:
                acked.set_exception(error)
            else:
                meta = future.result()
                acked.set_result(Sent(meta.topic, meta.partition, meta.offset + relative))

    batch.add_done_callback(done)


async def _reachable(producer: AIOKafkaProducer) -> bool:
    """Whether the producer holds, or can open now, a connection to a broker it knows.

    Checked before a send so that a broker that refuses connections (stopped, or cut off) is
    a 503 in milliseconds rather than after the publish timeout, and the command never enters
    the producer's buffer, from which it would still be delivered once the broker is back. A
    held connection costs a dictionary lookup; with no brokers known yet, the send decides.
    """
    brokers = producer.client.cluster.brokers()
    if not brokers:
        return True
    for broker in brokers:
        if await producer.client.ready(broker.nodeId):
            return True
    return False


async def _quietly_stop(producer: AIOKafkaProducer) -> None:
    # Best-effort cleanup of a producer that never started.
    with contextlib.suppress(Exception):
        await asyncio.wait_for(producer.stop(), 2.0)
