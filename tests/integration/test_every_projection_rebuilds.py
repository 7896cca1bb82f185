"""Every projection the registry declares rebuilds blue/green to the rows it built incrementally,
from a store holding every stored form of its context's events (the golden files)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from contexts import REGISTRY
from events.outcomes import CommandRejected, CommandSucceeded
from events.stored import EventMeta, decode, encode_state
from infra.eventstore import EventStore, open_factory
from infra.migrate import migrate
from infra.stack import create_database, drop_database, eventsourcing_env
from projections.rebuild import Rebuilder
from projections.runner import ProjectionRunner

if TYPE_CHECKING:
    from collections.abc import Iterator

    from contexts.base import Context
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@pytest.fixture(params=REGISTRY.contexts, ids=REGISTRY.names)
def context_store(
    request: pytest.FixtureRequest, endpoints: Endpoints
) -> Iterator[tuple[Context, EventStore, str]]:
    context: Context = request.param
    name = f"uait_rebuild_{context.name}_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    factory = open_factory(context.name, eventsourcing_env(url))
    try:
        yield context, EventStore(context.name, factory), url
    finally:
        factory.close()
        drop_database(endpoints.database_url, name)


def _another_command(type_name: str, state: bytes) -> bytes:
    """The golden outcome, for a command of its own (a store holds one outcome per command)."""
    decoded = decode(type_name, state)
    event = decoded.event.model_copy(update={"command_id": str(uuid.uuid4())})
    return encode_state(event, decoded.occurred_at, EventMeta(**decoded.meta))


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def test_every_projection_of_every_context_rebuilds_to_its_incremental_rows(
    context_store: tuple[Context, EventStore, str],
) -> None:
    context, store, url = context_store
    stored = []
    for event in (*context.events, CommandSucceeded, CommandRejected):
        for version in range(1, event.VERSION + 1):
            state = (GOLDEN / f"{event.TYPE}.v{version}.json").read_bytes()
            if event in (CommandSucceeded, CommandRejected):
                state = _another_command(event.TYPE, state)
            stored.append(StoredEvent(uuid.uuid4(), 1, event.TYPE, state))
    store.append(stored)
    projections = [p for p in REGISTRY.projections() if p.context == context.name]
    assert projections
    tracking = store.factory.tracking_recorder()
    written = 0
    for projection in projections:
        incremental = ProjectionRunner(projection, store.recorder, tracking, batch_size=3)
        incremental.setup()
        incremental.catch_up()
        assert incremental.position() == store.head()
        before = {t: rows(url, t) for t in projection.tables}
        written += sum(len(r) for r in before.values())
        result = Rebuilder(projection, store.recorder, tracking, batch_size=5).rebuild()
        assert result is not None, projection.name
        assert result.events == store.head()
        for table in projection.tables:
            assert rows(url, table) == before[table], f"{projection.name}: {table} differs"
    assert written > 0
