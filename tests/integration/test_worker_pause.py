"""Pausing a context stops consumption without a rebalance; resuming continues where it was."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from contexts import REGISTRY
from events.ids import command_aggregate_id
from events.knowledge.commands import IngestDocument
from infra.actors import operator_signer
from infra.control import PauseControl
from infra.publisher import CommandPublisher
from infra.settings import Settings
from infra.stack import EmbeddedStack, eventsourcing_env
from tests.conftest import with_actor_keys
from uait.main import app as cli
from uait.processes import prepare
from workers.main import build_worker

if TYPE_CHECKING:
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


async def test_a_paused_context_holds_its_commands_until_resumed(endpoints: Endpoints, tmp_path):
    base = with_actor_keys(
        Settings(database_url=endpoints.database_url, worker_session_timeout_ms=3000)
    )
    with EmbeddedStack(base, data_dir=tmp_path) as ep:  # private Kafka and Redis
        settings = base.model_copy(
            update={"kafka_bootstrap": ep.kafka_bootstrap, "redis_url": ep.redis_url}
        )
        await asyncio.to_thread(prepare, settings)
        worker = build_worker(
            settings,
            REGISTRY.contexts,
            kafka_bootstrap=ep.kafka_bootstrap,
            es_env=eventsourcing_env(ep.database_url),
            only=["knowledge"],
        )
        redis = Redis.from_url(ep.redis_url)
        await worker.broker.start()
        control = PauseControl(redis, list(worker.broker.subscribers), interval_s=0.1)
        task = asyncio.create_task(control.run())
        store = worker.stores["knowledge"]
        env = {"UAIT_REDIS_URL": ep.redis_url}
        try:
            signer = await asyncio.to_thread(operator_signer, settings)
            async with CommandPublisher(ep.kafka_bootstrap, signer=signer) as publisher:

                async def decided(envelope, timeout: float) -> bool:
                    outcome = command_aggregate_id(envelope.message_id)
                    for _ in range(int(timeout * 10)):
                        if await asyncio.to_thread(store.existing, [outcome]):
                            return True
                        await asyncio.sleep(0.1)
                    return False

                def doc() -> IngestDocument:
                    return IngestDocument(
                        document_id=f"p-{uuid.uuid4().hex[:8]}", title="T", text="held"
                    )

                first = await publisher.publish(doc(), actor="t")
                assert await decided(first, 30), "the worker never joined"
                # The command topic's subscriber (the retry topic has its own, paused alike).
                [subscriber] = [
                    s
                    for s in worker.broker.subscribers
                    if list(s.topic_names_for_subscribe) == ["uait.commands.knowledge"]
                ]
                members_before = subscriber.consumer._coordinator.member_id

                paused = await asyncio.to_thread(
                    CliRunner().invoke, cli, ["workers", "pause", "--context", "knowledge"], env=env
                )
                assert paused.exit_code == 0, paused.output
                assert "paused: knowledge" in paused.output
                await asyncio.sleep(0.5)
                held = await publisher.publish(doc(), actor="t")
                assert not await decided(held, 2.0), "a paused worker went on consuming"
                assert subscriber.consumer.paused(), "its partitions should be paused"

                resumed = await asyncio.to_thread(
                    CliRunner().invoke, cli, ["workers", "resume"], env=env
                )
                assert resumed.exit_code == 0, resumed.output
                assert await decided(held, 10), "the held command was not decided after resume"
                # no rebalance: the same member kept its partitions all along
                assert subscriber.consumer._coordinator.member_id == members_before
        finally:
            task.cancel()
            await worker.broker.stop()
            worker.close()
            await redis.aclose()


def test_pausing_needs_redis_and_known_contexts():
    runner = CliRunner()
    assert runner.invoke(cli, ["workers", "pause"], env={"UAIT_REDIS_URL": ""}).exit_code == 2
    unknown = runner.invoke(
        cli, ["workers", "pause", "--context", "nope"], env={"UAIT_REDIS_URL": "redis://x"}
    )
    assert unknown.exit_code == 2
