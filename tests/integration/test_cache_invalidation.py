"""Cache invalidation follows the documents projection, never ahead of it, on real services."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
import redis
from eventsourcing.postgres import PostgresApplicationRecorder
from redis.asyncio import Redis

from app.cache import Cache
from app.knowledge.cache import CachedQueries
from app.knowledge.queries import DocumentQueries
from app.positions import PositionWatcher
from events.envelope import dumps, wrap
from events.knowledge.commands import DeleteDocument, IngestDocument
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.settings import Settings
from infra.stack import create_database, drop_database, eventsourcing_env
from projections.base import TransientProjectionError
from projections.control import read_state, write_state
from projections.knowledge.cache_invalidation import (
    COLLECTION,
    CacheInvalidation,
    bucket,
    generations_key,
)
from projections.knowledge.documents import DocumentsProjection
from projections.runner import ProjectionRunner
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.items import Record
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def database(endpoints: Endpoints) -> Iterator[str]:
    name = f"uait_cache_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    try:
        yield url
    finally:
        drop_database(endpoints.database_url, name)


@pytest.fixture
def store(database: str) -> Iterator[AggregateStore]:
    factory = open_factory("knowledge", eventsourcing_env(database))
    try:
        yield AggregateStore("knowledge", factory)
    finally:
        factory.close()


def write(store: AggregateStore, commands: list[Any]) -> None:
    processor = BatchProcessor(
        store, KnowledgeDecider(max_text_bytes=10_000, chunk_size=200, chunk_overlap=20)
    )
    records = [
        Record("t", 0, i, dumps(wrap(c, actor="test")), c.document_id.encode())
        for i, c in enumerate(commands)
    ]
    processor.process(records)


def runner(store: AggregateStore, projection: Any) -> ProjectionRunner:
    recorder = store.factory.application_recorder()
    assert isinstance(recorder, PostgresApplicationRecorder)
    return ProjectionRunner(projection, recorder, store.factory.tracking_recorder(), batch_size=3)


def generations(client: redis.Redis, prefix: str) -> dict[str, int]:
    raw = client.hgetall(generations_key(prefix))
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


def test_generations_move_only_after_the_documents_rows_are_committed(
    store: AggregateStore, endpoints: Endpoints
) -> None:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(endpoints.redis_url)
    documents = runner(store, DocumentsProjection())
    documents.setup()
    invalidation = runner(store, CacheInvalidation(client, prefix))
    ids = [f"doc-{i}-{uuid.uuid4().hex[:6]}" for i in range(4)]
    write(store, [IngestDocument(document_id=d, title=d, text=f"Text of {d}.") for d in ids])

    assert invalidation.catch_up() == 0, "it read past the documents projection"
    assert generations(client, prefix) == {}

    assert documents.run_batch() == 3  # the first three events only
    invalidation.catch_up()
    assert invalidation.position() == documents.position() == 3
    documents.catch_up()
    invalidation.catch_up()
    assert invalidation.position() == documents.position()
    gens = generations(client, prefix)
    for d in ids:
        assert gens[bucket(d)] >= 1
    assert gens[COLLECTION] >= 2  # one bump per batch that changed something

    before = generations(client, prefix)
    write(store, [DeleteDocument(document_id=ids[0])])
    documents.catch_up()
    invalidation.catch_up()
    after = generations(client, prefix)
    assert after[bucket(ids[0])] == before[bucket(ids[0])] + 1
    assert after[COLLECTION] == before[COLLECTION] + 1
    untouched = {bucket(d) for d in ids[1:]} - {bucket(ids[0])}
    assert all(after[b] == before[b] for b in untouched)
    client.close()


def test_with_redis_unreachable_the_follower_waits_and_is_never_marked_failed(
    store: AggregateStore, endpoints: Endpoints, tmp_path: Any
) -> None:
    documents = runner(store, DocumentsProjection())
    documents.setup()
    gone = redis.Redis(unix_socket_path=str(tmp_path / "none.sock"), socket_connect_timeout=0.2)
    invalidation = runner(store, CacheInvalidation(gone, "test"))
    write(store, [IngestDocument(document_id=f"d-{uuid.uuid4().hex[:6]}", title="t", text="x.")])
    documents.catch_up()
    with pytest.raises(TransientProjectionError):
        invalidation._advance()
    assert invalidation.position() == 0
    assert read_state(invalidation.datastore, CacheInvalidation.name).state == "running"


async def test_cache_keys_follow_the_live_version_of_the_documents_tables(
    database: str, endpoints: Endpoints
) -> None:
    """A blue/green swap or a rollback writes live_version; the keys change with it."""
    watcher = PositionWatcher(database, {DocumentsProjection.name: "knowledge_tracking"})
    client = Redis.from_url(endpoints.redis_url)
    settings = Settings(database_url=database, redis_url=endpoints.redis_url)
    cached = CachedQueries(DocumentQueries(None), Cache(client), watcher, settings)  # type: ignore[arg-type]
    assert not cached.ready, "the live version cannot be known before it is read"
    await watcher.start()
    try:
        for _ in range(200):
            if cached.ready:
                break
            await asyncio.sleep(0.025)
        assert cached.ready
        assert cached.version() == DocumentsProjection.version  # none recorded yet
        for version in (7, 3):
            with psycopg.connect(database, autocommit=True) as conn, conn.cursor() as cur:
                write_state(cur, DocumentsProjection.name, live_version=version)
            for _ in range(200):
                if cached.version() == version:
                    break
                await asyncio.sleep(0.025)
            assert cached.version() == version
    finally:
        await watcher.stop()
        await client.aclose()
