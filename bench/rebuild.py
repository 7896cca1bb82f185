"""``uait bench rebuild``: rebuild a projection from N events, against the library's plain runner.

Generates N events (documents and their command outcomes, about half each) straight into a fresh
embedded store, rebuilds the ``knowledge.documents`` projection blue/green with this framework,
then runs the ``eventsourcing`` library's own ``ProjectionRunner`` (one event, one transaction per
call) over a sample of the same history, with the same projection code, in the same run.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from eventsourcing.application import Application
from eventsourcing.persistence import Mapper, StoredEvent, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.projection import Projection
from eventsourcing.projection import ProjectionRunner as PlainRunner
from psycopg.sql import SQL, Identifier
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import contexts  # noqa: F401  (registers every message type)
from events.ids import command_aggregate_id, document_aggregate_id, uuid7
from events.knowledge.events import ChunkSpan, DocumentIngested
from events.outcomes import CommandSucceeded
from events.stored import EventMeta, decode, encode_state
from infra.eventstore import EventStore, open_factory
from infra.migrate import migrate
from infra.settings import Settings
from infra.stack import EmbeddedStack, eventsourcing_env
from projections.base import Envelope
from projections.knowledge.documents import DocumentsProjection
from projections.rebuild import Rebuilder

if TYPE_CHECKING:
    from collections.abc import Callable

console = Console()
PLAIN_SCHEMA = "bench_plain"


def generate(store: EventStore, n: int, progress: Callable[[int], None]) -> None:
    """About n events: each document version is followed by its command's outcome."""
    at = datetime.now(UTC)
    documents = max(n // 20, 1)
    versions: dict[str, int] = {}
    batch: list[StoredEvent] = []
    for i in range(n // 2):
        doc = f"doc-{i % documents}"
        version = versions[doc] = versions.get(doc, 0) + 1
        command = uuid7()
        meta = EventMeta(command_id=command, correlation_id=command, actor="bench")
        text = f"kafka store projection replay rebuild snapshot {i} " * 3
        event = DocumentIngested(
            document_id=doc,
            version=version,
            title=f"Document {doc}",
            text=text,
            source="bench",
            tags=["bench"],
            content_sha256="0" * 64,
            chunks=[ChunkSpan(index=0, start=0, end=len(text.rstrip()))],
        )
        outcome = CommandSucceeded(
            command_id=str(command), command_type="IngestDocument", detail=f"version {version}"
        )
        batch.append(
            StoredEvent(
                document_aggregate_id(doc), version, event.TYPE, encode_state(event, at, meta)
            )
        )
        batch.append(
            StoredEvent(
                command_aggregate_id(command), 1, outcome.TYPE, encode_state(outcome, at, meta)
            )
        )
        if len(batch) >= 10_000:
            store.append(batch)
            progress(len(batch))
            batch = []
    if batch:
        store.append(batch)
        progress(len(batch))


# --- the library's plain runner, fed the same events and the same projection code -----------


class StoredFormatMapper(Mapper[Any]):
    """Lets the library's application read our stored format (type-name topics, orjson)."""

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        decoded = decode(stored_event.topic, stored_event.state)
        return Envelope(
            position=0,
            aggregate_id=stored_event.originator_id,
            aggregate_version=stored_event.originator_version,
            event=decoded.event,
            occurred_at=decoded.occurred_at,
            meta=decoded.meta,
        )


class KnowledgeApp(Application[Any]):
    name = "knowledge"

    def construct_mapper(self) -> Mapper[Any]:
        return StoredFormatMapper(transcoder=self.factory.transcoder())


class DocumentsView(PostgresTrackingRecorder):
    """The documents read model, written one event per transaction with its tracking record."""

    projection = DocumentsProjection()

    def apply_one(self, envelope: Envelope, tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as cur:
            cur.execute(SQL("SET LOCAL search_path TO {}, public").format(Identifier(PLAIN_SCHEMA)))
            self.projection.apply(cur, [envelope])
            self._insert_tracking(cur, tracking)


class PlainDocuments(Projection[DocumentsView]):
    name = "bench_plain_documents"
    topics: ClassVar[tuple[str, ...]] = ()  # type: ignore[misc]

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        if domain_event.event.TYPE in DocumentsProjection.topics:
            position_aware = Envelope(
                tracking.notification_id,
                domain_event.aggregate_id,
                domain_event.aggregate_version,
                domain_event.event,
                domain_event.occurred_at,
                domain_event.meta,
            )
            self.view.apply_one(position_aware, tracking)
        else:
            self.view.insert_tracking(tracking)


def plain_rate(store: EventStore, es_env: dict[str, str], sample: int) -> float:
    with store.datastore.transaction(commit=True) as cur:
        cur.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(PLAIN_SCHEMA)))
        cur.execute(SQL("SET LOCAL search_path TO {}, public").format(Identifier(PLAIN_SCHEMA)))
        DocumentsProjection().create(cur)
    env = {**es_env, "POSTGRES_ENABLE_DB_FUNCTIONS": "n", "CREATE_TABLE": "y"}
    started = time.perf_counter()
    with PlainRunner(
        application_class=KnowledgeApp,
        projection_class=PlainDocuments,
        view_class=DocumentsView,
        env=env,
    ) as runner:
        runner.wait(sample, timeout=600)
    return sample / (time.perf_counter() - started)


def main(*, events_count: int, sample: int, batch_size: int) -> None:
    with tempfile.TemporaryDirectory(prefix="uait-bench-rebuild-") as tmp:
        settings = Settings(kafka_bootstrap="unused:1", redis_url="unused")
        with EmbeddedStack(settings, data_dir=Path(tmp)) as endpoints:
            migrate(endpoints.database_url)
            es_env = eventsourcing_env(endpoints.database_url)
            factory = open_factory("knowledge", es_env)
            store = EventStore("knowledge", factory)
            try:
                with _progress() as progress:
                    task = progress.add_task("generate", total=events_count)
                    generate(store, events_count, lambda k: progress.advance(task, k))
                total = store.head()
                tracking = factory.tracking_recorder()
                rebuilder = Rebuilder(
                    DocumentsProjection(), store.recorder, tracking, batch_size=batch_size
                )
                with _progress() as progress:
                    task = progress.add_task("rebuild", total=total)
                    result = rebuilder.rebuild(progress=lambda k: progress.advance(task, k))
                assert result is not None
                console.print(
                    f"framework: {result.events:,} events in {result.seconds:.1f} s = "
                    f"[bold]{result.rate:,.0f} events/s[/bold] (pages of {batch_size} read "
                    "while the last is staged by COPY into UNLOGGED tables; live tables, search "
                    "vectors and index built once at the end; blue/green swap included)"
                )
                plain = plain_rate(store, es_env, min(sample, total))
                console.print(
                    f"library ProjectionRunner: {min(sample, total):,}-event sample = "
                    f"[bold]{plain:,.0f} events/s[/bold] (one event per transaction)"
                )
            finally:
                factory.close()
    ratio = result.rate / plain
    print(
        f"rebuild: {result.rate:.0f} events/s, plain runner {plain:.0f} events/s, ratio {ratio:.1f}"
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )
