"""Cancelling a command through Redis: waiting or in retry it never runs; running, it stops at
its next check. Its outcome is rejected with the code cancelled (real broker, PostgreSQL, Redis).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

import pytest
from redis.asyncio import Redis

from events.envelope import dumps, wrap
from events.knowledge.commands import IngestDocument
from events.outcomes import CommandRejected, CommandSucceeded
from infra.cancel import request_cancel
from infra.publisher import CommandPublisher, headers_for
from infra.settings import Settings
from tests.integration.retry_harness import running_worker
from tests.integration.test_retry_path import send

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def base(endpoints: Endpoints) -> Settings:
    return Settings(
        database_url=endpoints.database_url,
        redis_url=endpoints.redis_url,
        worker_session_timeout_ms=3000,
        retry_attempts=5,
        retry_base_s=3.0,
        retry_cap_s=3.0,
        retry_jitter=False,
    )


@pytest.fixture
async def redis(endpoints: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(endpoints.redis_url)
    yield client
    await client.aclose()


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def test_a_running_handler_stops_at_its_next_check_once_cancelled(base, tmp_path, redis):
    async with running_worker(base, tmp_path) as h:
        doc = f"s-{tag()}"
        async with CommandPublisher(h.settings.kafka_bootstrap) as publisher:
            slow = await send(publisher, IngestDocument(document_id=doc, title="slow", text="S"))
            deadline = time.monotonic() + 20
            while doc not in h.decider.slow_started:
                assert time.monotonic() < deadline, "the slow command never started"
                await asyncio.sleep(0.02)
            cancelled_at = time.monotonic()
            await request_cancel(redis, slow, ttl_s=60)
            outcome = await h.wait_outcome(slow)
        # The handler would have worked for 12 s; it stopped at a check right after the cancel.
        assert time.monotonic() - cancelled_at < 6
        assert isinstance(outcome, CommandRejected)
        assert (outcome.code, outcome.reason) == ("cancelled", "cancelled on request")
        assert await asyncio.to_thread(h.texts, doc) == []


async def test_a_command_in_retry_is_never_executed_again_once_cancelled(base, tmp_path, redis):
    async with running_worker(base, tmp_path) as h:
        doc = f"r-{tag()}"
        async with CommandPublisher(h.settings.kafka_bootstrap) as publisher:
            flaky = await send(
                publisher, IngestDocument(document_id=doc, title="flaky:9", text="R")
            )
            behind = await send(publisher, IngestDocument(document_id=doc, title="T", text="R2"))
            deadline = time.monotonic() + 20
            while h.decider.failures["R"] < 1:
                assert time.monotonic() < deadline, "the flaky command never ran"
                await asyncio.sleep(0.02)
            await request_cancel(redis, flaky, ttl_s=60)  # it waits 3 s for its next attempt
            outcome = await h.wait_outcome(flaky)
            assert isinstance(outcome, CommandRejected)
            assert outcome.code == "cancelled"
            assert h.decider.failures["R"] == 1  # it never ran again
            # The command parked behind it goes on.
            assert isinstance(await h.wait_outcome(behind), CommandSucceeded)
        assert await asyncio.to_thread(h.texts, doc) == ["R2"]


async def test_a_command_cancelled_before_it_is_consumed_is_never_executed(base, tmp_path, redis):
    async with running_worker(base, tmp_path) as h:
        doc = f"w-{tag()}"
        async with CommandPublisher(h.settings.kafka_bootstrap) as publisher:
            command = IngestDocument(document_id=doc, title="T", text="W")
            envelope = wrap(command, actor="test")
            await request_cancel(redis, envelope.message_id, ttl_s=60)
            await publisher.send_raw(
                "uait.commands.knowledge", dumps(envelope), doc.encode(), headers_for(envelope)
            )
            outcome = await h.wait_outcome(envelope.message_id)
        assert isinstance(outcome, CommandRejected)
        assert outcome.code == "cancelled"
        assert await asyncio.to_thread(h.texts, doc) == []
