"""Export -> import -> rebuild gives identical read models; damaged backups change nothing."""

from __future__ import annotations

import gzip
import random
import uuid
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from typer.testing import CliRunner

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.knowledge.commands import DeleteDocument, IngestDocument
from infra.backup import BackupError, export_store, import_store
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.stack import create_database, drop_database, eventsourcing_env
from projections.runner import ProjectionRunner
from uait.main import app
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.items import Record
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def databases(endpoints: Endpoints) -> Iterator[tuple[str, str]]:
    names = [f"uait_bk_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    urls = [create_database(endpoints.database_url, n) for n in names]
    for url in urls:
        migrate(url)
    yield urls[0], urls[1]
    for n in names:
        drop_database(endpoints.database_url, n)


def store_for(url: str) -> AggregateStore:
    return AggregateStore("knowledge", open_factory("knowledge", eventsourcing_env(url)))


def history(store: AggregateStore, n: int) -> None:
    rng = random.Random(5)
    processor = BatchProcessor(
        store, KnowledgeDecider(max_text_bytes=10_000, chunk_size=100, chunk_overlap=10)
    )
    docs = [f"bk-{i}" for i in range(30)]
    commands: list[Any] = []
    for _ in range(n):
        d = rng.choice(docs)
        if rng.random() < 0.2:
            commands.append(DeleteDocument(document_id=d))
        else:
            words = ["ünïcode", "kafka", "store", "tab\tsep", 'q"uote']
            text = " ".join(rng.choice(words) for _ in range(40))
            commands.append(IngestDocument(document_id=d, title=f"T {d}", text=text))
    for start in range(0, n, 40):
        chunk = commands[start : start + 40]
        processor.process(
            [Record("t", 0, i, dumps(wrap(c, actor="bk")), None) for i, c in enumerate(chunk)]
        )


def project(store: AggregateStore) -> None:
    for projection in REGISTRY.projections():
        runner = ProjectionRunner(
            projection, store.recorder, store.factory.tracking_recorder(), batch_size=97
        )
        runner.setup()
        runner.catch_up()


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def test_export_then_import_then_rebuild_gives_identical_read_models(databases, tmp_path: Path):
    source_url, target_url = databases
    source, target = store_for(source_url), store_for(target_url)
    try:
        history(source, 400)
        project(source)
        backup = tmp_path / "knowledge.jsonl.gz"
        with backup.open("wb") as out:
            exported = export_store(source, out)
        assert exported == source.head()
        assert import_store(target, str(backup)) == exported
        assert target.head() == source.head()
        project(target)
        for projection in REGISTRY.projections():
            for table in projection.tables:
                assert rows(target_url, table) == rows(source_url, table), table
        # appends continue after the imported positions
        history(target, 5)
        assert target.head() > source.head()
    finally:
        source.factory.close()
        target.factory.close()


def corrupt(path: Path, how: str) -> None:
    with gzip.open(path, "rb") as gz:
        lines = gz.read().splitlines(keepends=True)
    if how == "flip":
        lines[3] = lines[3].replace(b'"aggregate_version":', b'"aggregate_version": ', 1)
    elif how == "truncate":
        lines = lines[:-1]
    with gzip.open(path, "wb") as gz:
        gz.writelines(lines)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_backup_is_refused_and_the_store_stays_empty(databases, tmp_path, how):
    source_url, target_url = databases
    source, target = store_for(source_url), store_for(target_url)
    try:
        history(source, 50)
        backup = tmp_path / "b.jsonl.gz"
        with backup.open("wb") as out:
            export_store(source, out)
        corrupt(backup, how)
        with pytest.raises(BackupError):
            import_store(target, str(backup))
        assert target.head() == 0
    finally:
        source.factory.close()
        target.factory.close()


def test_the_cli_exports_and_refuses_to_import_into_a_store_that_is_not_empty(databases, tmp_path):
    source_url, _ = databases
    source = store_for(source_url)
    try:
        history(source, 20)
    finally:
        source.factory.close()
    backup = str(tmp_path / "cli.jsonl.gz")
    env = {"UAIT_DATABASE_URL": source_url, "UAIT_KAFKA_BOOTSTRAP": "127.0.0.1:1"}
    runner = CliRunner()
    exported = runner.invoke(app, ["store", "export", backup], env=env)
    assert exported.exit_code == 0, exported.output
    assert "exported" in exported.output
    refused = runner.invoke(app, ["store", "import", backup], env=env)
    assert refused.exit_code == 2
    assert "not empty" in refused.output
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"not gzip at all")
    bad = runner.invoke(app, ["store", "import", str(garbage)], env=env)
    assert bad.exit_code == 2
