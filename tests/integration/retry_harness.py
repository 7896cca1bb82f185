"""A worker for one context with a scripted decider, on a private broker, for retry-path tests.

The decider is the real knowledge decider, except for documents whose title names a failure:
``flaky:N`` fails transiently the first N times, ``hang`` calls a backend that never answers
(cut by the job's timeout), ``slow`` works for a while and checks its cancel token between
steps. Every command for a document whose id starts with ``poison-`` fails transiently until
the decider is ``fixed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg
from aiokafka import AIOKafkaConsumer
from faststream.kafka import KafkaBroker

from events.ids import command_aggregate_id, document_aggregate_id
from events.knowledge.commands import IngestDocument, KnowledgeCommand
from infra.cancel import CancelWatcher
from infra.eventstore import open_factory
from infra.stack import EmbeddedStack, eventsourcing_env
from uait.processes import prepare
from workers import jobs
from workers.aggregate_store import AggregateStore
from workers.knowledge.handlers import KnowledgeDecider
from workers.wiring import include_context, start_retry_path, stop_retry_path

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator
    from pathlib import Path

    from aiokafka.structs import ConsumerRecord

    from events.base import Command, Event
    from infra.settings import Settings
    from workers.decisions import Streams, Verdict


@dataclass
class ScriptedDecider:
    inner: KnowledgeDecider = field(
        default_factory=lambda: KnowledgeDecider(
            max_text_bytes=10_000, chunk_size=200, chunk_overlap=20
        )
    )
    context: str = "knowledge"
    fixed: bool = False
    failures: Counter[str] = field(default_factory=Counter)
    slow_started: set[str] = field(default_factory=set)

    @property
    def commands(self) -> frozenset[type[Command]]:
        return self.inner.commands

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        return self.inner.stream_ids(command)

    def decide(self, command: Command, streams: Streams) -> Verdict:
        assert isinstance(command, KnowledgeCommand)
        title = command.title if isinstance(command, IngestDocument) else ""
        job = jobs.current()
        if title.startswith("flaky:") and self.failures[command.text] < int(title[6:]):
            self.failures[command.text] += 1
            raise jobs.TransientCommandError(f"backend busy ({self.failures[command.text]})")
        if command.document_id.startswith("poison-") and not self.fixed:
            self.failures[command.document_id] += 1
            raise jobs.TransientCommandError("backend down")
        if title == "hang" and not self.fixed:
            self.failures[command.document_id] += 1
            job.call(time.sleep, 30)
        if title == "slow":
            self.slow_started.add(command.document_id)
            for _ in range(600):
                job.check_cancelled()
                time.sleep(0.02)
        return self.inner.decide(command, streams)


@dataclass
class Harness:
    settings: Settings
    store: AggregateStore
    decider: ScriptedDecider

    def outcome(self, command_id: uuid.UUID) -> Event | None:
        oid = command_aggregate_id(command_id)
        events = self.store.load_streams([oid]).get(oid, [])
        assert len(events) <= 1, events
        return events[0] if events else None

    async def wait_outcome(self, command_id: uuid.UUID, timeout_s: float = 30) -> Event:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = await asyncio.to_thread(self.outcome, command_id)
            if found is not None:
                return found
            await asyncio.sleep(0.05)
        raise AssertionError(f"no outcome for {command_id} within {timeout_s} s")

    def texts(self, document_id: str) -> list[str]:
        """The texts a document was ingested with, in store order."""
        aid = document_aggregate_id(document_id)
        return [e.text for e in self.store.load_streams([aid]).get(aid, []) if hasattr(e, "text")]

    def sql(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.database_url) as conn:
            return conn.execute(query.encode(), params).fetchall()

    async def dead_letter_records(
        self, topic: str, wanted: int, timeout_s: float = 20
    ) -> list[ConsumerRecord[bytes, bytes]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.settings.kafka_bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        found: list[ConsumerRecord[bytes, bytes]] = []
        try:
            deadline = time.monotonic() + timeout_s
            while len(found) < wanted and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found.extend(records)
        finally:
            await consumer.stop()
        return found


@contextlib.asynccontextmanager
async def running_worker(
    base: Settings, data_dir: Path, decider: ScriptedDecider | None = None
) -> AsyncIterator[Harness]:
    """A private broker, and the context's subscribers (commands and retries) on it."""
    with EmbeddedStack(base, data_dir=data_dir) as ep:
        settings = base.model_copy(update={"kafka_bootstrap": ep.kafka_bootstrap})
        await asyncio.to_thread(prepare, settings)
        factory = open_factory("knowledge", eventsourcing_env(settings.database_url))
        store = AggregateStore("knowledge", factory, statement_timeout_ms=10_000)
        decider = decider or ScriptedDecider()
        cancels = CancelWatcher(None)
        broker = KafkaBroker(settings.kafka_bootstrap)
        dispatcher = include_context(
            broker,
            store,
            decider,
            settings,
            kafka_bootstrap=settings.kafka_bootstrap,
            cancels=cancels,
        )
        tasks = await start_retry_path([dispatcher], cancels, settings.redis_url)
        await broker.start()
        try:
            yield Harness(settings, store, decider)
        finally:
            await broker.stop()
            await stop_retry_path([dispatcher], tasks)
            if cancels.redis is not None:
                await cancels.redis.aclose()
            factory.close()
