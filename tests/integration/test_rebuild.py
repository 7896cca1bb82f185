"""Blue/green rebuilds, rollback, and a projection's failed/paused states, on the real store."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from typer.testing import CliRunner

from events.envelope import dumps, wrap
from events.knowledge.commands import IngestDocument
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.stack import create_database, drop_database, eventsourcing_env
from projections.command_outcomes import CommandOutcomesProjection
from projections.control import read_state, set_state
from projections.knowledge.documents import DocumentsProjection
from projections.rebuild import NothingToRollBackError, Rebuilder
from projections.runner import ProjectionRunner, rebuild_into
from uait.main import app
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.items import Record
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def store(endpoints: Endpoints) -> Iterator[AggregateStore]:
    name = f"uait_rb_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    factory = open_factory("knowledge", eventsourcing_env(url), pool_size=8)
    yield AggregateStore("knowledge", factory)
    factory.close()
    drop_database(endpoints.database_url, name)


def url_of(store: AggregateStore) -> str:
    kw = store.datastore.pool.kwargs
    return f"host={kw['host']} port={kw['port']} dbname={kw['dbname']} user={kw['user']}"


def ingest(store: AggregateStore, ids: list[str], text: str = "body") -> None:
    processor = BatchProcessor(
        store, KnowledgeDecider(max_text_bytes=10_000, chunk_size=80, chunk_overlap=10)
    )
    records = [
        Record(
            "t",
            0,
            i,
            dumps(
                wrap(
                    IngestDocument(document_id=d, title=f"T {d}", text=f"{text} {d} " * 8),
                    actor="x",
                )
            ),
            None,
        )
        for i, d in enumerate(ids)
    ]
    processor.process(records)


def runner(store: AggregateStore, projection: Any, batch: int = 500) -> ProjectionRunner:
    r = ProjectionRunner(
        projection, store.recorder, store.factory.tracking_recorder(), batch_size=batch
    )
    r.setup()
    return r


def rows(store: AggregateStore, schema: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url_of(store)) as conn:
        conn.execute(f'SET search_path TO "{schema}", public')
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def equals_a_fresh_rebuild(store: AggregateStore, projection: Any) -> None:
    schema = f"check_{uuid.uuid4().hex[:6]}"
    rebuild_into(projection, store.recorder, schema)
    for table in projection.tables:
        assert rows(store, "public", table) == rows(store, schema, table), table


def test_the_live_view_never_goes_empty_or_partial_during_a_rebuild_and_no_event_is_lost(store):
    projection = DocumentsProjection()
    ingest(store, [f"base-{i}" for i in range(300)])
    live = runner(store, projection)
    live.catch_up()
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def follow() -> None:
        live.run_forever(stop, idle_wait_s=0.05)

    def write() -> None:
        n = 0
        while not stop.is_set():
            ingest(store, [f"new-{n}-{k}" for k in range(5)])
            n += 1
            time.sleep(0.01)

    def read() -> None:
        try:
            with psycopg.connect(url_of(store), autocommit=True) as conn:
                while not stop.is_set():
                    row = conn.execute("SELECT count(*) FROM documents").fetchone()
                    seen.append(int(row[0]) if row else 0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in (follow, write, read)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.3)
        result = Rebuilder(projection, store.recorder, live.tracking, batch_size=40).rebuild()
        assert result is not None
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not errors, errors
    assert len(seen) > 20, "the reader should have queried throughout"
    assert min(seen) >= 300, "the live view was empty or partial"
    assert seen == sorted(seen), "the live view went backwards"
    assert live.catch_up() >= 0
    equals_a_fresh_rebuild(store, projection)
    state = read_state(store.datastore, projection.name)
    assert state.live_version == projection.version
    assert state.previous_schema == "retired_knowledge_documents"
    assert state.rebuild_schema is None


def test_an_interrupted_rebuild_resumes_and_still_gives_equal_rows(store):
    projection = CommandOutcomesProjection("knowledge", "command_outcomes")
    ingest(store, [f"d{i}" for i in range(120)])
    live = runner(store, projection)
    live.catch_up()
    rebuilder = Rebuilder(projection, store.recorder, live.tracking, batch_size=25)
    pages = iter(range(3))
    assert rebuilder.rebuild(should_stop=lambda: next(pages, None) is None) is None
    resumed_at = live.tracking.max_tracking_id(f"{projection.name}@rebuild")
    assert resumed_at is not None
    assert resumed_at > 0
    progress: list[int] = []
    result = Rebuilder(projection, store.recorder, live.tracking, batch_size=25).rebuild(
        progress=progress.append
    )
    assert result is not None
    assert sum(progress) == store.head() - resumed_at, "it resumed instead of starting over"
    equals_a_fresh_rebuild(store, projection)


def test_rollback_returns_to_the_previous_tables_caught_up_to_the_head(store):
    projection = DocumentsProjection()
    with pytest.raises(NothingToRollBackError):
        Rebuilder(projection, store.recorder, store.factory.tracking_recorder()).rollback()
    ingest(store, [f"a{i}" for i in range(50)])
    live = runner(store, projection)
    live.catch_up()
    rebuilder = Rebuilder(projection, store.recorder, live.tracking)
    assert rebuilder.rebuild() is not None
    ingest(store, [f"b{i}" for i in range(20)])
    position = rebuilder.rollback()
    assert position == store.head()
    assert len(rows(store, "public", "documents")) == 70
    equals_a_fresh_rebuild(store, projection)
    # and the rolled-back-from tables are kept too: rolling back again swaps once more
    ingest(store, [f"c{i}" for i in range(5)])
    rebuilder.rollback()
    assert len(rows(store, "public", "documents")) == 75
    equals_a_fresh_rebuild(store, projection)


class Fussy(DocumentsProjection):
    """Fails on one document until it is fixed."""

    broken = True

    def apply(self, cur: Any, batch: list[Any]) -> None:
        if self.broken and any(e.event.document_id == "poison" for e in batch):
            raise ValueError("cannot project the poison document")
        super().apply(cur, batch)


def wait_until(check: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_failing_event_stops_that_projection_only_and_retry_resumes_it(store):
    fussy = Fussy()
    ingest(store, ["ok-1", "ok-2"])
    ingest(store, ["poison"])
    ingest(store, ["ok-3"])
    docs = runner(store, fussy, batch=100)
    outcomes = runner(store, CommandOutcomesProjection("knowledge", "command_outcomes"), batch=100)
    stop = threading.Event()
    threads = [
        threading.Thread(target=r.run_forever, args=(stop,), kwargs={"idle_wait_s": 0.05})
        for r in (docs, outcomes)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: read_state(store.datastore, fussy.name).state == "failed")
        state = read_state(store.datastore, fussy.name)
        assert state.failed_event_type == "DocumentIngested"
        assert "poison" in (state.error or "")
        # the events before it were applied, the failing one and those after it were not
        applied = {r[0] for r in rows(store, "public", "documents")}
        assert applied == {"ok-1", "ok-2"}
        assert docs.position() == state.failed_position - 1
        # the other projection is not held back
        wait_until(lambda: outcomes.position() == store.head())
        fussy.broken = False
        set_state(store.datastore, fussy.name, "running")
        wait_until(lambda: docs.position() == store.head())
        assert {r[0] for r in rows(store, "public", "documents")} == {
            "ok-1",
            "ok-2",
            "poison",
            "ok-3",
        }
        assert read_state(store.datastore, fussy.name).state == "running"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)


def test_a_paused_projection_holds_its_position_until_resumed(store):
    docs = runner(store, DocumentsProjection(), batch=100)
    stop = threading.Event()
    thread = threading.Thread(target=docs.run_forever, args=(stop,), kwargs={"idle_wait_s": 0.05})
    thread.start()
    try:
        ingest(store, ["p1"])
        wait_until(lambda: docs.position() == store.head())
        set_state(store.datastore, docs.projection.name, "paused")
        time.sleep(0.3)
        held = docs.position()
        ingest(store, ["p2", "p3"])
        time.sleep(0.5)
        assert docs.position() == held
        set_state(store.datastore, docs.projection.name, "running")
        wait_until(lambda: docs.position() == store.head())
    finally:
        stop.set()
        thread.join(timeout=10)


class DocumentsNext(DocumentsProjection):
    version = DocumentsProjection.version + 1


def test_a_changed_code_version_is_rebuilt_at_start_or_only_flagged(store, caplog):
    from projections.process import check_version

    ingest(store, ["v-1", "v-2"])
    first = runner(store, DocumentsProjection())
    first.catch_up()
    check_version(first, rebuild=True)
    now = DocumentsProjection.version
    assert read_state(store.datastore, first.projection.name).live_version == now

    second = runner(store, DocumentsNext())
    check_version(second, rebuild=False)
    assert read_state(store.datastore, second.projection.name).live_version == now
    assert "run `uait projections rebuild" in caplog.text

    check_version(second, rebuild=True)
    state = read_state(store.datastore, second.projection.name)
    assert (state.live_version, state.previous_version) == (now + 1, now)
    equals_a_fresh_rebuild(store, DocumentsNext())


def test_a_rebuild_from_a_time_replays_exactly_the_events_committed_since(endpoints):
    name = f"uait_rbt_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    factory = open_factory("knowledge", eventsourcing_env(url))
    try:
        store = AggregateStore("knowledge", factory)
        ingest(store, [f"early{i}" for i in range(5)])
        time.sleep(0.05)
        mark = datetime.now(UTC)
        time.sleep(0.05)
        first_late = store.head() + 1
        ingest(store, [f"late{i}" for i in range(4)])
        runner(store, DocumentsProjection()).catch_up()
        env = {"UAIT_DATABASE_URL": url, "UAIT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap}
        cli = CliRunner()
        naive = cli.invoke(
            app,
            ["projections", "rebuild", DocumentsProjection.name, "--from-time", "2026-01-01T10:00"],
            env=env,
        )
        assert naive.exit_code == 2
        assert "time zone" in naive.output
        ok = cli.invoke(
            app,
            ["projections", "rebuild", DocumentsProjection.name, "--from-time", mark.isoformat()],
            env=env,
        )
        assert ok.exit_code == 0, ok.output
        documents = rows(store, "public", "documents")
        assert [d[0] for d in documents] == [f"late{i}" for i in range(4)]
        assert min(d[-1] for d in documents) == first_late
        assert {c[0] for c in rows(store, "public", "chunks")} == {f"late{i}" for i in range(4)}
    finally:
        factory.close()
        drop_database(endpoints.database_url, name)


def test_a_staging_build_lost_in_a_crash_starts_over_and_the_live_tables_end_up_logged(store):
    projection = DocumentsProjection()
    ingest(store, [f"d{i}" for i in range(60)])
    live = runner(store, projection)
    live.catch_up()
    rebuilder = Rebuilder(projection, store.recorder, live.tracking, batch_size=25)
    pages = iter(range(2))
    assert rebuilder.rebuild(should_stop=lambda: next(pages, None) is None) is None
    with psycopg.connect(url_of(store), autocommit=True) as conn:
        staged = conn.execute(
            "SELECT c.relname, c.relpersistence FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relkind = 'r'",
            (rebuilder.shadow,),
        ).fetchall()
        assert staged
        assert {p for _, p in staged} == {"u"}, "staging tables are UNLOGGED"
        # What crash recovery does to UNLOGGED tables: every one of them comes back empty.
        for table, _ in staged:
            conn.execute(f'TRUNCATE "{rebuilder.shadow}"."{table}"')
    progress: list[int] = []
    result = Rebuilder(projection, store.recorder, live.tracking, batch_size=25).rebuild(
        progress=progress.append
    )
    assert result is not None
    assert sum(progress) == store.head(), "it started over instead of resuming on lost rows"
    equals_a_fresh_rebuild(store, projection)
    with psycopg.connect(url_of(store)) as conn:
        live_tables = conn.execute(
            "SELECT c.relname, c.relpersistence FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname = ANY(%s)",
            (list(projection.tables),),
        ).fetchall()
        assert sorted(live_tables) == sorted((t, "p") for t in projection.tables)
        index = conn.execute("SELECT to_regclass('public.chunks_search_idx') AS i").fetchone()
        assert index is not None
        assert index[0] is not None
