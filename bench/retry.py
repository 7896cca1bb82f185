"""``uait bench retry``: commands/s through the retry path against the normal path, in one run.

A fresh embedded stack (Tansu + PostgreSQL) and the knowledge context's real subscribers (the
command topic and the retry topic) in this process. Each round publishes N new documents and
times first publish -> last outcome committed:

- normal: every command succeeds on its first attempt (command topic -> one transaction);
- retry: every command fails transiently once, so it goes command topic -> retry topic (with
  its parking row and lifecycle entry) -> decided again, with a zero backoff so that the figure
  is the path's own cost, not the configured wait.

Rounds alternate (normal, retry, normal, ...) so both see the same machine; medians are printed.
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from rich.console import Console

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.knowledge.commands import IngestDocument, KnowledgeCommand
from events.topics import command_topic
from infra.cancel import CancelWatcher
from infra.eventstore import open_factory
from infra.publisher import headers_for
from infra.settings import Settings
from infra.stack import EmbeddedStack, eventsourcing_env
from infra.startup import prepare
from workers import jobs
from workers.aggregate_store import AggregateStore
from workers.knowledge.handlers import KnowledgeDecider
from workers.wiring import include_context, start_retry_path, stop_retry_path

if TYPE_CHECKING:
    from events.base import Command
    from workers.decisions import Streams, Verdict

console = Console()


@dataclass
class FailOnce:
    """The knowledge decider; a document titled "retry" fails transiently on its first try."""

    inner: KnowledgeDecider = field(
        default_factory=lambda: KnowledgeDecider(
            max_text_bytes=10_000, chunk_size=1200, chunk_overlap=150
        )
    )
    context: str = "knowledge"
    failed: set[str] = field(default_factory=set)

    @property
    def commands(self) -> frozenset[type[Command]]:
        return self.inner.commands

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        return self.inner.stream_ids(command)

    def decide(self, command: Command, streams: Streams) -> Verdict:
        assert isinstance(command, KnowledgeCommand)
        retry = isinstance(command, IngestDocument) and command.title == "retry"
        if retry and command.document_id not in self.failed:
            self.failed.add(command.document_id)
            raise jobs.TransientCommandError("first attempt fails")
        return self.inner.decide(command, streams)


def _outcomes(conn: psycopg.Connection[tuple[int]]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM knowledge_events WHERE topic = 'CommandSucceeded'"
    ).fetchone()
    return int(row[0]) if row else 0


async def _round(
    producer: AIOKafkaProducer, conn: psycopg.Connection[tuple[int]], n: int, title: str
) -> float:
    before = await asyncio.to_thread(_outcomes, conn)
    run = uuid.uuid4().hex[:8]
    started = time.perf_counter()
    for i in range(n):
        doc = f"bench-{run}-{i}"
        envelope = wrap(
            IngestDocument(document_id=doc, title=title, text=f"text of {doc}"), actor="bench"
        )
        await producer.send(
            command_topic("knowledge"),
            dumps(envelope),
            key=doc.encode(),
            headers=headers_for(envelope),
        )
    await producer.flush()
    while await asyncio.to_thread(_outcomes, conn) - before < n:  # noqa: ASYNC110  (polls PostgreSQL)
        await asyncio.sleep(0.02)
    return n / (time.perf_counter() - started)


async def _run(settings: Settings, commands: int, rounds: int) -> tuple[list[float], list[float]]:
    factory = open_factory("knowledge", eventsourcing_env(settings.database_url))
    store = AggregateStore("knowledge", factory)
    cancels = CancelWatcher(None)
    broker = KafkaBroker(settings.kafka_bootstrap)
    dispatcher = include_context(
        broker,
        store,
        FailOnce(),
        settings,
        kafka_bootstrap=settings.kafka_bootstrap,
        cancels=cancels,
    )
    tasks = await start_retry_path([dispatcher], cancels, "")
    await broker.start()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    await producer.start()
    normal: list[float] = []
    retried: list[float] = []
    try:
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            await _round(producer, conn, 200, "warm-up")  # the first group joins
            for i in range(rounds):
                normal.append(await _round(producer, conn, commands, "T"))
                retried.append(await _round(producer, conn, commands, "retry"))
                console.print(
                    f"round {i + 1}: normal {normal[-1]:.0f}/s, retry path {retried[-1]:.0f}/s"
                )
    finally:
        await producer.stop()
        await broker.stop()
        await stop_retry_path([dispatcher], tasks)
        factory.close()
    return normal, retried


def main(*, commands: int = 5000, rounds: int = 3) -> None:
    with tempfile.TemporaryDirectory(prefix="uait-bench-retry-") as tmp:
        base = Settings(retry_base_s=0.0, retry_jitter=False)
        with EmbeddedStack(base, data_dir=Path(tmp)) as ep:
            settings = base.model_copy(
                update={
                    "kafka_bootstrap": ep.kafka_bootstrap,
                    "database_url": ep.database_url,
                    "redis_url": ep.redis_url,
                }
            )
            prepare(settings, REGISTRY.topic_specs(settings))
            normal, retried = asyncio.run(_run(settings, commands, rounds))
    n, r = statistics.median(normal), statistics.median(retried)
    console.print(
        f"retry: normal path {n:.0f} commands/s, retry path {r:.0f} commands/s "
        f"(each command failing once), ratio {r / n:.2f} "
        f"({rounds} rounds of {commands}; medians)"
    )
