"""`uait dlq list|show|redrive|purge` against a dead letter that a dispatcher really wrote."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import orjson
import pytest
from typer.testing import CliRunner

from events.envelope import dumps, wrap
from events.knowledge.commands import IngestDocument
from events.topics import command_topic
from infra.eventstore import open_factory
from infra.policies import JobPolicy
from infra.publisher import headers_for
from infra.settings import Settings
from infra.stack import eventsourcing_env
from uait.main import app
from uait.processes import prepare
from workers.aggregate_store import AggregateStore
from workers.items import BatchReport, Deferral, Item, Record
from workers.parking import Parking
from workers.retries import RetryDispatcher

if TYPE_CHECKING:
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

runner = CliRunner()
TOPIC = command_topic("knowledge")


@pytest.fixture(scope="module")
def env(endpoints: Endpoints) -> dict[str, str]:
    prepare(
        Settings(kafka_bootstrap=endpoints.kafka_bootstrap, database_url=endpoints.database_url)
    )
    return {
        "UAIT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "UAIT_DATABASE_URL": endpoints.database_url,
    }


def dead_letter(endpoints: Endpoints) -> uuid.UUID:
    """A command dead-lettered by the dispatcher after its only attempt; its dead letter id."""
    doc = f"cli-{uuid.uuid4().hex[:8]}"
    command = IngestDocument(document_id=doc, title="T", text="dead")
    envelope = wrap(command, actor="cli-test")
    record = Record(TOPIC, 1, 42, dumps(envelope), doc.encode(), None, tuple(headers_for(envelope)))
    item = Item(
        record,
        envelope.message_id,
        envelope=envelope,
        command=command,
        policy=JobPolicy(attempts=1),
    )
    failure = Deferral(item, datetime.now(UTC), "TransientCommandError", "backend down", "")
    factory = open_factory("knowledge", eventsourcing_env(endpoints.database_url))
    try:
        store = AggregateStore("knowledge", factory)
        dispatcher = RetryDispatcher("knowledge", endpoints.kafka_bootstrap, store, Parking(store))

        async def send() -> None:
            try:
                await dispatcher.dispatch(BatchReport(deferred=[failure]))
            finally:
                await dispatcher.stop()

        asyncio.run(send())
        with factory.datastore.get_connection() as conn:
            row = conn.execute(
                "SELECT id FROM dead_letters WHERE command_id = %s", (envelope.message_id,)
            ).fetchone()
        assert row is not None
        return uuid.UUID(str(row["id"]))
    finally:
        factory.close()


def test_a_dead_letter_is_listed_shown_redriven_once_and_purged(env, endpoints):
    dead_id = dead_letter(endpoints)

    listed = runner.invoke(app, ["dlq", "list", "--topic", TOPIC, "--since", "10m"], env=env)
    assert listed.exit_code == 0, listed.output
    assert str(dead_id) in listed.output
    assert "TransientCommandError" in listed.output

    shown = runner.invoke(app, ["dlq", "show", str(dead_id)], env=env)
    assert shown.exit_code == 0, shown.output
    body = orjson.loads(shown.stdout)
    assert (body["topic"], body["kafka_partition"], body["kafka_offset"]) == (TOPIC, 1, 42)
    assert body["headers"]["uait-error-message"] == "backend down"

    redriven = runner.invoke(app, ["dlq", "redrive", "--id", str(dead_id)], env=env)
    assert redriven.exit_code == 0, redriven.output
    assert "1 redriven, 0 refused" in redriven.output
    again = runner.invoke(app, ["dlq", "redrive", "--id", str(dead_id)], env=env)
    assert again.exit_code == 1
    assert "already redriven" in again.output

    time.sleep(1.1)
    purged = runner.invoke(app, ["dlq", "purge", "--older-than", "1s"], env=env)
    assert purged.exit_code == 0, purged.output
    assert "purged" in purged.output
    missing = runner.invoke(app, ["dlq", "show", str(dead_id)], env=env)
    assert missing.exit_code == 1


def test_bad_dlq_arguments_are_refused_with_exit_code_2_and_change_nothing(env):
    assert runner.invoke(app, ["dlq", "purge", "--older-than", "soon"], env=env).exit_code == 2
    assert runner.invoke(app, ["dlq", "list", "--since", "the dawn"], env=env).exit_code == 2
    neither = runner.invoke(app, ["dlq", "redrive"], env=env)
    assert neither.exit_code == 2
    assert "--id" in neither.output
    both = runner.invoke(app, ["dlq", "redrive", "--all", "--id", str(uuid.uuid4())], env=env)
    assert both.exit_code == 2
