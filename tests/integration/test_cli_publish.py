"""`uait publish`: the same envelope as the ingress, and clear errors for bad input."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from typer.testing import CliRunner

from events.envelope import loads
from events.topics import command_topic
from infra.settings import Settings
from uait.main import app
from uait.processes import prepare

if TYPE_CHECKING:
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

runner = CliRunner()


@pytest.fixture(scope="module")
def env(endpoints: Endpoints) -> dict[str, str]:
    prepare(
        Settings(kafka_bootstrap=endpoints.kafka_bootstrap, database_url=endpoints.database_url)
    )
    return {
        "UAIT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "UAIT_DATABASE_URL": endpoints.database_url,
    }


@pytest.mark.parametrize(
    ("argument", "message"),
    [
        ("{not json", "invalid command"),
        ('{"payload": {}}', "invalid command"),
        ('{"type": "LaunchRocket", "payload": {}}', "unknown message type"),
        ('{"type": "IngestDocument", "payload": {"document_id": "d"}}', "title"),
        (
            '{"type": "DocumentDeleted", "payload": {"document_id": "d", "version": 1}}',
            "not a command",
        ),
    ],
)
def test_bad_commands_are_refused_with_a_message_and_exit_code_2(env, argument, message):
    result = runner.invoke(app, ["publish", "knowledge", argument], env=env)
    assert result.exit_code == 2
    assert message in result.output


def test_a_command_of_another_context_is_refused(env):
    payload = orjson.dumps({"type": "IngestDocument", "payload": {"document_id": "d"}}).decode()
    result = runner.invoke(app, ["publish", "agents", payload], env=env)
    assert result.exit_code == 2


def test_a_published_command_lands_on_its_topic_in_the_ingress_envelope(env, endpoints):
    doc = f"cli-{uuid.uuid4().hex[:8]}"
    command = {
        "type": "IngestDocument",
        "payload": {"document_id": doc, "title": "From the CLI", "text": "hello"},
    }
    result = runner.invoke(
        app, ["publish", "knowledge", orjson.dumps(command).decode(), "--actor", "ops"], env=env
    )
    assert result.exit_code == 0, result.output
    command_id = uuid.UUID(result.output.strip().splitlines()[-1])

    async def find() -> bytes:
        consumer = AIOKafkaConsumer(
            command_topic("knowledge"),
            bootstrap_servers=endpoints.kafka_bootstrap,
            auto_offset_reset="earliest",
            group_id=f"cli-test-{uuid.uuid4().hex}",
            session_timeout_ms=2000,
        )
        await consumer.start()
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while asyncio.get_running_loop().time() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for r in records:
                        if r.key == doc.encode():
                            return r.value
            raise AssertionError("the command never reached the topic")
        finally:
            await consumer.stop()

    envelope = loads(asyncio.run(find()))
    assert envelope.message_id == command_id
    assert envelope.actor == "ops"
    assert envelope.type == "IngestDocument"
    assert envelope.payload["document_id"] == doc
