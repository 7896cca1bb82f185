"""The batched projection runner: read models are a pure function of the event store."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.knowledge.commands import DeleteDocument, IngestDocument
from infra.embeddings import LocalMiniLM, MiniLM
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.stack import create_database, drop_database, eventsourcing_env
from projections.knowledge.documents import DocumentsProjection
from projections.rebuild import Rebuilder
from projections.runner import ProjectionRunner, rebuild_into
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.items import Record
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database_url(endpoints: Endpoints) -> Iterator[str]:
    name = f"uait_proj_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    yield url
    drop_database(endpoints.database_url, name)


@pytest.fixture(scope="module")
def store(database_url: str) -> Iterator[AggregateStore]:
    factory = open_factory("knowledge", eventsourcing_env(database_url))
    yield AggregateStore("knowledge", factory)
    factory.close()


def write_history(store: AggregateStore, commands: int, seed: int) -> None:
    rng = random.Random(seed)
    processor = BatchProcessor(
        store,
        KnowledgeDecider(
            max_text_bytes=10_000, chunk_size=120, chunk_overlap=20, embedder=LocalMiniLM()
        ),
    )
    docs = [f"p{seed}-{i}" for i in range(40)]
    records = []
    for n in range(commands):
        doc = rng.choice(docs)
        if rng.random() < 0.15:
            command: Any = DeleteDocument(document_id=doc)
        else:
            words = " ".join(rng.choice(["alpha", "beta", "gamma", "delta."]) for _ in range(60))
            command = IngestDocument(
                document_id=doc, title=f"Title {rng.randint(1, 3)}", text=words, tags=["t"]
            )
        records.append(Record("t", 0, n, dumps(wrap(command, actor="gen")), doc.encode()))
    while records:
        size = rng.randint(1, 50)
        processor.process(records[:size])
        del records[:size]


def knowledge_projections() -> list[Any]:
    """The projections of the store these tests write to (the knowledge context)."""
    return [p for p in REGISTRY.projections() if p.context == "knowledge"]


def runners(store: AggregateStore, batch_size: int) -> list[ProjectionRunner]:
    out = []
    for projection in knowledge_projections():
        runner = ProjectionRunner(
            projection, store.recorder, store.factory.tracking_recorder(), batch_size=batch_size
        )
        runner.setup()
        out.append(runner)
    return out


def rows(database_url: str, schema: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        conn.execute(f'SET search_path TO "{schema}", public')
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def test_small_incremental_batches_give_the_same_rows_as_one_rebuild(store, database_url):
    write_history(store, 800, seed=1)
    for runner in runners(store, batch_size=7):
        runner.catch_up()
        assert runner.position() == store.head()
    for projection in knowledge_projections():
        schema = f"rebuild_{uuid.uuid4().hex[:6]}"
        rebuild_into(projection, store.recorder, schema, batch_size=100_000)
        for table in projection.tables:
            live = rows(database_url, "public", table)
            assert live, table
            assert live == rows(database_url, schema, table), table


def test_a_running_projection_follows_new_events_by_notification(store, database_url):
    followers = runners(store, batch_size=500)
    for r in followers:
        r.catch_up()
    stop = threading.Event()
    threads = [threading.Thread(target=r.run_forever, args=(stop,)) for r in followers]
    for t in threads:
        t.start()
    try:
        write_history(store, 50, seed=2)
        head = store.head()
        deadline = time.monotonic() + 10
        while any(r.position() < head for r in followers):
            assert time.monotonic() < deadline, "projection did not follow the new events"
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


def test_a_second_runner_of_the_same_projection_never_applies_a_batch_twice(store, database_url):
    write_history(store, 30, seed=3)
    first, second = runners(store, 10)[0], runners(store, 10)[0]
    start = first.position()
    # The second runner read its position before the first committed the same batch.
    second.position = lambda: start  # type: ignore[method-assign]
    applied = first.run_batch()
    assert applied > 0
    before = rows(database_url, "public", "documents")
    assert second.run_batch() == 0  # its transaction is refused by the tracking record
    assert rows(database_url, "public", "documents") == before
    assert first.position() == start + applied


def test_a_rebuild_reproduces_the_vector_index_without_calling_the_embedder(
    store, database_url, monkeypatch
):
    write_history(store, 120, seed=5)
    for runner in runners(store, batch_size=50):
        runner.catch_up()
    (documents,) = [p for p in knowledge_projections() if isinstance(p, DocumentsProjection)]
    before = rows(database_url, "public", "chunk_vectors")
    assert before
    query = f"[{','.join(['0.05'] * 384)}]"
    nearest = (
        "SELECT document_id, chunk_index FROM chunk_vectors"
        " ORDER BY embedding <=> %s::halfvec(384), document_id, chunk_index LIMIT 20"
    )
    with psycopg.connect(database_url) as conn:
        conn.execute("SET enable_indexscan = off")  # exact: HNSW's graph is built differently
        near_before = conn.execute(nearest, (query,)).fetchall()
    assert len(near_before) == 20

    def unreachable(*args, **kwargs):
        raise AssertionError("a rebuild called the embedder")

    monkeypatch.setattr(MiniLM, "__init__", unreachable)
    monkeypatch.setattr(MiniLM, "embed", unreachable)
    result = Rebuilder(documents, store.recorder, store.factory.tracking_recorder()).rebuild()
    assert result is not None
    assert rows(database_url, "public", "chunk_vectors") == before
    with psycopg.connect(database_url) as conn:
        conn.execute("SET enable_indexscan = off")
        assert conn.execute(nearest, (query,)).fetchall() == near_before
