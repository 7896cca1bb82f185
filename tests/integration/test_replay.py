"""`uait replay`: by position or by commit time, exactly the right events, to any topic."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from events.envelope import dumps, wrap
from events.knowledge.commands import DeleteDocument, IngestDocument
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.settings import Settings
from infra.stack import EmbeddedStack, create_database, drop_database, eventsourcing_env
from projections.relay import BlockingProducer
from projections.replay import replay, window
from uait.main import app
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.items import Record
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    name = f"uait_replay_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    base = Settings(database_url=url, redis_url=endpoints.redis_url)
    with EmbeddedStack(base, data_dir=tmp_path_factory.mktemp("replay-kafka")) as ep:
        factory = open_factory("knowledge", eventsourcing_env(url))
        try:
            yield url, ep.kafka_bootstrap, AggregateStore("knowledge", factory)
        finally:
            factory.close()
    drop_database(endpoints.database_url, name)


def batch(store: AggregateStore, commands: list[Any]) -> None:
    processor = BatchProcessor(
        store, KnowledgeDecider(max_text_bytes=10_000, chunk_size=100, chunk_overlap=10)
    )
    processor.process(
        [Record("t", 0, i, dumps(wrap(c, actor="r")), None) for i, c in enumerate(commands)]
    )


def consume(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
        )
        await consumer.start()
        out: list[dict[str, Any]] = []
        try:
            idle = 0
            while idle < 3:
                got = await consumer.getmany(timeout_ms=500)
                idle = 0 if got else idle + 1
                out += [orjson.loads(r.value) for rs in got.values() for r in rs]
        finally:
            await consumer.stop()
        return out

    return asyncio.run(run())


def test_replay_by_commit_time_selects_exactly_the_events_committed_in_the_window(world):
    _, bootstrap, store = world
    marks = []
    for k in range(3):
        time.sleep(0.05)
        marks.append(datetime.now(UTC))
        time.sleep(0.05)
        batch(
            store, [IngestDocument(document_id=f"w{k}-{i}", title="T", text="t") for i in range(4)]
        )
    # batch k: 4 documents + 4 outcomes, committed after marks[k]
    heads = []
    with store.datastore.get_connection() as conn:
        for row in conn.execute(
            "SELECT first_position, last_position FROM event_commit_times"
            " WHERE context = 'knowledge' ORDER BY first_position"
        ).fetchall()[-3:]:
            heads.append((row["first_position"], row["last_position"]))
    selected = window(store, from_time=marks[1], to_time=marks[2])
    assert (selected.after + 1, selected.until) == heads[1]
    topic = f"replay.{uuid.uuid4().hex[:6]}"
    producer = BlockingProducer(bootstrap)
    try:
        published, last = replay(store, producer, topic, selected, types=["DocumentIngested"])
    finally:
        producer.close()
    assert (published, last) == (4, heads[1][1])
    events = consume(bootstrap, topic)
    assert sorted(e["data"]["document_id"] for e in events) == [f"w1-{i}" for i in range(4)]
    # each record keeps its store position (order holds per aggregate, i.e. per partition)
    first, last_pos = heads[1]
    assert all(first <= e["position"] <= last_pos for e in events)
    assert len({e["event_id"] for e in events}) == 4


def test_the_replay_command_publishes_by_position_and_refuses_bad_input(world):
    url, bootstrap, store = world
    doc = f"cli-{uuid.uuid4().hex[:6]}"
    start = store.head() + 1
    batch(store, [IngestDocument(document_id=doc, title="T", text="t")])
    batch(store, [DeleteDocument(document_id=doc)])
    topic = f"replay.{uuid.uuid4().hex[:6]}"
    env = {"UAIT_DATABASE_URL": url, "UAIT_KAFKA_BOOTSTRAP": bootstrap}
    runner = CliRunner()
    ok = runner.invoke(
        app,
        ["replay", "--to-topic", topic, "--from-position", str(start), "--type", "DocumentDeleted"],
        env=env,
    )
    assert ok.exit_code == 0, ok.output
    assert "published 1 events" in ok.output
    [event] = consume(bootstrap, topic)
    assert (event["type"], event["data"]["document_id"]) == ("DocumentDeleted", doc)
    bad = runner.invoke(app, ["replay", "--to-topic", topic, "--type", "Nope"], env=env)
    assert bad.exit_code == 2
    naive = runner.invoke(
        app, ["replay", "--to-topic", topic, "--from-time", "2026-01-01T00:00:00"], env=env
    )
    assert naive.exit_code == 2
