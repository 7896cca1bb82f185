"""An event-store append runs under PostgreSQL's statement_timeout: when it is cut, the server
has aborted its transaction, so it can never commit later (after the batch was retried)."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg
import pytest
from eventsourcing.persistence import StoredEvent

from events.ids import command_aggregate_id
from events.outcomes import CommandSucceeded
from events.stored import EventMeta, encode_state
from infra.eventstore import EventStore, open_factory
from infra.migrate import migrate
from infra.stack import eventsourcing_env

if TYPE_CHECKING:
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


def outcome_event(command_id: uuid.UUID) -> StoredEvent:
    event = CommandSucceeded(command_id=str(command_id), command_type="IngestDocument")
    meta = EventMeta(command_id=command_id, correlation_id=command_id, actor="t")
    return StoredEvent(
        originator_id=command_aggregate_id(command_id),
        originator_version=1,
        topic=event.TYPE,
        state=encode_state(event, datetime.now(UTC), meta),
    )


def test_an_append_cut_by_its_statement_timeout_never_commits_afterwards(endpoints: Endpoints):
    migrate(endpoints.database_url)
    factory = open_factory("knowledge", eventsourcing_env(endpoints.database_url))
    store = EventStore("knowledge", factory, statement_timeout_ms=300)
    command_id = uuid.uuid4()
    release = threading.Event()
    locked = threading.Event()

    def hold_the_table() -> None:
        # Another writer holds the events table (as a stuck append would) for a while.
        with psycopg.connect(endpoints.database_url) as conn, conn.transaction():
            conn.execute("LOCK TABLE knowledge_events IN EXCLUSIVE MODE")
            locked.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_table)
    holder.start()
    try:
        assert locked.wait(10)
        with pytest.raises(Exception, match="statement timeout"):
            store.append([outcome_event(command_id)])
    finally:
        release.set()
        holder.join()
    try:
        # The lock is gone: a late commit would show now. There is none.
        assert store.existing([command_aggregate_id(command_id)]) == set()
        # The same append, retried, commits once.
        store.append([outcome_event(command_id)])
        assert store.existing([command_aggregate_id(command_id)]) == {
            command_aggregate_id(command_id)
        }
    finally:
        factory.close()
