"""Transient failures go through the retry topic and, past their attempts, to the DLQ, without
blocking other aggregates or reordering one aggregate's commands (real broker, PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest
from psycopg_pool import AsyncConnectionPool

from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.ids import command_aggregate_id
from events.jobs import ATTEMPTS_HEADER, TIMEOUT_HEADER
from events.knowledge.commands import DeleteDocument, IngestDocument
from events.outcomes import CommandRejected, CommandSucceeded
from events.topics import command_topic, dead_letter_topic
from infra.dead_letters import DeadLetters, RedriveRefusedError
from infra.publisher import CommandPublisher, headers_for
from infra.settings import Settings
from tests.integration.retry_harness import running_worker

if TYPE_CHECKING:
    from collections.abc import Sequence

    from events.base import Command
    from infra.stack import Endpoints
    from tests.integration.retry_harness import Harness

pytestmark = pytest.mark.integration

TOPIC = command_topic("knowledge")


@pytest.fixture
def base(endpoints: Endpoints) -> Settings:
    return Settings(
        database_url=endpoints.database_url,
        redis_url=endpoints.redis_url,
        worker_session_timeout_ms=3000,
        retry_attempts=3,
        retry_base_s=1.0,
        retry_cap_s=2.0,
    )


def tag() -> str:
    return uuid.uuid4().hex[:8]


async def send(
    publisher: CommandPublisher, command: Command, extra: Sequence[tuple[str, bytes]] = ()
) -> uuid.UUID:
    envelope = wrap(command, actor="test")
    await publisher.send_raw(
        TOPIC,
        dumps(envelope),
        command.partition_key().encode(),
        [*headers_for(envelope), *extra],
    )
    return envelope.message_id


def positions(h: Harness, command_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    by_outcome = {command_aggregate_id(c): c for c in command_ids}
    rows = h.sql(
        "SELECT originator_id, notification_id FROM knowledge_events"
        " WHERE originator_id = ANY(%s) AND originator_version = 1",
        (list(by_outcome),),
    )
    return {by_outcome[oid]: pos for oid, pos in rows}


async def test_a_command_that_fails_once_is_retried_and_its_aggregate_keeps_its_order(
    base, tmp_path
):
    async with running_worker(base, tmp_path) as h:
        doc = f"a-{tag()}"
        async with CommandPublisher(h.settings.kafka_bootstrap) as publisher:
            a1 = await send(publisher, IngestDocument(document_id=doc, title="flaky:1", text="A1"))
            a2 = await send(publisher, IngestDocument(document_id=doc, title="T", text="A2"))
            others = [
                await send(publisher, IngestDocument(document_id=f"b-{tag()}", title="T", text="B"))
                for _ in range(20)
            ]
            a3 = await send(publisher, IngestDocument(document_id=doc, title="T", text="A3"))
        for command_id in [a1, a2, a3, *others]:
            assert isinstance(await h.wait_outcome(command_id), CommandSucceeded)

        # One aggregate's commands took effect in the order they were sent ...
        assert await asyncio.to_thread(h.texts, doc) == ["A1", "A2", "A3"]
        # ... while the other aggregates did not wait for A1's backoff.
        at = positions(h, [a1, *others])
        assert max(at[c] for c in others) < at[a1]
        # The lifecycle shows the failed attempt, its error and when the next one was due.
        [(state, history, last_error)] = h.sql(
            "SELECT state, attempt_history, last_error FROM command_log WHERE command_id = %s",
            (a1,),
        )
        assert state == "retrying"
        assert [(e["attempt"], e["error"], e["dead_lettered"]) for e in history] == [
            (1, "backend busy (1)", False)
        ]
        assert history[0]["next_attempt_at"] > history[0]["at"]
        assert "TransientCommandError" in last_error
        # Nothing stays parked once the aggregate's commands are done.
        assert h.sql("SELECT count(*) FROM command_parking WHERE aggregate_key = %s", (doc,)) == [
            (0,)
        ]


async def test_a_command_that_always_fails_is_dead_lettered_with_its_headers_and_index_row(
    base, tmp_path
):
    async with running_worker(base, tmp_path) as h:
        doc = f"poison-{tag()}"
        async with CommandPublisher(h.settings.kafka_bootstrap) as publisher:
            poison = await send(publisher, IngestDocument(document_id=doc, title="T", text="P1"))
            others = [
                await send(publisher, IngestDocument(document_id=f"c-{tag()}", title="T", text="C"))
                for _ in range(10)
            ]
            # The partition keeps flowing: the other aggregates finish while the poison retries.
            for command_id in others:
                assert isinstance(await h.wait_outcome(command_id, 10), CommandSucceeded)
            assert h.outcome(poison) is None

            dead = await h.dead_letter_records(dead_letter_topic(TOPIC), 1, timeout_s=30)
            assert len(dead) == 1
            headers = {k: v.decode() for k, v in dead[0].headers}
            assert headers["uait-error-type"] == "TransientCommandError"
            assert headers["uait-error-message"] == "backend down"
            assert len(headers["uait-traceback-digest"]) == 16
            assert headers["uait-failures"] == "3"
            assert headers["uait-original-topic"] == TOPIC
            assert headers["message_id"] == str(poison)
            assert headers["uait-first-failure-at"] < headers["uait-last-failure-at"]
            assert int(headers["uait-original-offset"]) >= 0
            assert h.decider.failures[doc] == 3
            assert h.outcome(poison) is None  # a dead letter is not an outcome

            [row] = h.sql(
                "SELECT id, error_type, attempts, topic, kafka_partition, kafka_offset,"
                " dlq_partition, dlq_offset, redriven_at FROM dead_letters WHERE command_id = %s",
                (poison,),
            )
            assert row[1:] == (
                "TransientCommandError",
                3,
                TOPIC,
                int(headers["uait-original-partition"]),
                int(headers["uait-original-offset"]),
                dead[0].partition,
                dead[0].offset,
                None,
            )
            [(state, history)] = h.sql(
                "SELECT state, attempt_history FROM command_log WHERE command_id = %s", (poison,)
            )
            assert state == "dead_lettered"
            assert [e["attempt"] for e in history] == [1, 2, 3]
            assert [e["dead_lettered"] for e in history] == [False, False, True]

            # Once the cause is fixed, a redrive gives the command its one outcome ...
            h.decider.fixed = True
            async with AsyncConnectionPool(h.settings.database_url, open=False) as pool:
                dlq = DeadLetters(pool, REGISTRY.names)
                await dlq.redrive(row[0], publisher)
                assert isinstance(await h.wait_outcome(poison), CommandSucceeded)
                assert await asyncio.to_thread(h.texts, doc) == ["P1"]
                # ... and a second redrive of the same dead letter is refused.
                with pytest.raises(RedriveRefusedError, match="already redriven"):
                    await dlq.redrive(row[0], publisher)


async def test_a_dead_letter_whose_command_was_rejected_meanwhile_is_not_redriven(base, tmp_path):
    async with running_worker(base, tmp_path) as h:
        doc = f"poison-{tag()}"
        envelope = wrap(DeleteDocument(document_id=doc), actor="test")
        record = (dumps(envelope), doc.encode(), [*headers_for(envelope), (ATTEMPTS_HEADER, b"1")])
        async with CommandPublisher(h.settings.kafka_bootstrap) as publisher:
            await publisher.send_raw(TOPIC, *record)
            await h.dead_letter_records(dead_letter_topic(TOPIC), 1)
            # The same command, delivered again once the backend is back: the document does
            # not exist, so it is rejected for good.
            h.decider.fixed = True
            await publisher.send_raw(TOPIC, *record)
            assert isinstance(await h.wait_outcome(envelope.message_id), CommandRejected)
            [(dead_id,)] = h.sql(
                "SELECT id FROM dead_letters WHERE command_id = %s", (envelope.message_id,)
            )
            async with AsyncConnectionPool(h.settings.database_url, open=False) as pool:
                with pytest.raises(RedriveRefusedError, match="re-issue it as a new command"):
                    await DeadLetters(pool, REGISTRY.names).redrive(dead_id, publisher)
                # Refused means unchanged: the dead letter is still open.
                assert (await DeadLetters(pool, REGISTRY.names).get(dead_id))["redriven_at"] is None


async def test_a_call_that_hangs_past_its_timeout_is_retried_then_dead_lettered(base, tmp_path):
    async with running_worker(base, tmp_path) as h:
        doc = f"h-{tag()}"
        async with CommandPublisher(h.settings.kafka_bootstrap) as publisher:
            # Job headers override the type's policy: two attempts, 0.2 s per external call.
            hung = await send(
                publisher,
                IngestDocument(document_id=doc, title="hang", text="H"),
                [(ATTEMPTS_HEADER, b"2"), (TIMEOUT_HEADER, b"0.2")],
            )
            after = await send(publisher, IngestDocument(document_id=doc, title="T", text="H2"))
            dead = await h.dead_letter_records(dead_letter_topic(TOPIC), 1, timeout_s=30)
        headers = {k: v.decode() for k, v in dead[0].headers}
        assert headers["uait-error-type"] == "ExternalCallTimeoutError"
        assert "within 0.2 s" in headers["uait-error-message"]
        assert headers["uait-failures"] == "2"
        assert h.decider.failures[doc] == 2
        # The command parked behind it runs once it is dead-lettered.
        assert isinstance(await h.wait_outcome(after), CommandSucceeded)
        assert h.outcome(hung) is None
