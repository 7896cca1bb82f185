"""Dead letters and cancellation over HTTP, against the real worker, projections and ingress."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from events.envelope import dumps, wrap
from events.knowledge.commands import IngestDocument
from events.topics import command_topic, dead_letter_topic
from infra.actors import operator_signer
from infra.eventstore import open_factory
from infra.policies import JobPolicy
from infra.publisher import headers_for
from infra.settings import Settings
from infra.stack import eventsourcing_env
from tests.conftest import with_actor_keys
from workers.aggregate_store import AggregateStore
from workers.items import BatchReport, Deferral, Item, Record
from workers.parking import Parking
from workers.retries import RetryDispatcher

if TYPE_CHECKING:
    import httpx

    from infra.stack import Endpoints

pytestmark = pytest.mark.e2e

TOPIC = command_topic("knowledge")
DLQ = "/v1/admin/dlq"
PROBLEM_JSON = "application/problem+json"


def wait_status(api: httpx.Client, command_id: str, wanted: set[str], timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        response = api.get(f"/v1/commands/{command_id}")
        if response.status_code == 200 and response.json()["status"] in wanted:
            return response.json()
        assert time.monotonic() < deadline, f"{command_id}: {response.text}"
        time.sleep(0.1)


def dead_letter(endpoints: Endpoints, doc: str) -> uuid.UUID:
    """Send a command to the DLQ the way a worker does after its last failed attempt."""
    command = IngestDocument(document_id=doc, title="T", text="dead")
    signer = operator_signer(with_actor_keys(Settings(database_url=endpoints.database_url)))
    assert signer is not None
    envelope = wrap(command, actor="e2e", actor_token=signer("e2e", command))
    record = Record(TOPIC, 0, 7, dumps(envelope), doc.encode(), None, tuple(headers_for(envelope)))
    item = Item(
        record,
        envelope.message_id,
        envelope=envelope,
        command=command,
        policy=JobPolicy(attempts=1),
    )
    failure = Deferral(
        item,
        datetime.now(UTC),
        error_type="TransientCommandError",
        error="embedder down",
        traceback='Traceback:\n  File "x.py", line 1, in decide\nTransientCommandError: down',
    )
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
    finally:
        factory.close()
    return envelope.message_id


def test_a_dead_letter_is_listed_shown_redriven_once_and_then_has_its_outcome(
    api: httpx.Client, endpoints: Endpoints
):
    doc = f"dlq-{uuid.uuid4().hex[:8]}"
    command_id = dead_letter(endpoints, doc)

    listed = api.get(DLQ, params={"topic": TOPIC, "since": "1h"})
    assert listed.status_code == 200, listed.text
    [entry] = [e for e in listed.json()["dead_letters"] if e["command_id"] == str(command_id)]
    assert entry["dlq_topic"] == dead_letter_topic(TOPIC)
    assert (entry["error_type"], entry["attempts"]) == ("TransientCommandError", 1)
    lifecycle = wait_status(api, str(command_id), {"dead_lettered"})
    assert lifecycle["last_error"] == "TransientCommandError: embedder down"
    assert [
        (a["attempt"], a["error"], a["dead_lettered"]) for a in lifecycle["attempt_history"]
    ] == [(1, "embedder down", True)]

    shown = api.get(f"{DLQ}/{entry['id']}").json()
    assert shown["headers"]["uait-error-message"] == "embedder down"
    assert shown["key"] == doc
    assert '"document_id":"' + doc in shown["value"]

    redriven = api.post(f"{DLQ}/{entry['id']}/redrive")
    assert redriven.status_code == 200, redriven.text
    # The real worker now decides the command: it gets its one outcome.
    assert wait_status(api, str(command_id), {"succeeded", "rejected"})["status"] == "succeeded"

    again = api.post(f"{DLQ}/{entry['id']}/redrive")
    assert again.status_code == 409
    assert again.headers["content-type"] == PROBLEM_JSON
    assert "already redriven" in again.json()["detail"]
    assert all(
        e["id"] != entry["id"] for e in api.get(DLQ, params={"topic": TOPIC}).json()["dead_letters"]
    )


def test_dead_letter_admin_errors_are_problems_and_change_nothing(api: httpx.Client):
    assert api.get(f"{DLQ}/{uuid.uuid4()}").status_code == 404
    assert api.post(f"{DLQ}/{uuid.uuid4()}/redrive").status_code == 404
    bad = api.get(DLQ, params={"since": "yesterday-ish"})
    assert (bad.status_code, bad.headers["content-type"]) == (400, PROBLEM_JSON)
    assert api.delete(DLQ, params={"older_than": "7 parsecs"}).status_code == 400
    assert api.delete(DLQ).status_code == 422


def test_old_dead_letters_are_purged_from_the_index(api: httpx.Client, endpoints: Endpoints):
    dead_letter(endpoints, f"purge-{uuid.uuid4().hex[:8]}")
    time.sleep(1.1)
    purged = api.delete(DLQ, params={"older_than": "1s"})
    assert purged.status_code == 200
    assert purged.json()["purged"] >= 1
    assert api.get(DLQ, params={"since": "1h", "include_redriven": True}).json() == {
        "dead_letters": []
    }


def test_cancelling_a_finished_or_unknown_command_is_refused(api: httpx.Client):
    body = {"document_id": f"c-{uuid.uuid4().hex[:8]}", "title": "T", "text": "done"}
    done = api.post("/v1/knowledge/documents", json=body, headers={"Prefer": "wait=20"})
    assert done.status_code == 201, done.text
    finished = api.post(f"/v1/commands/{done.json()['command_id']}/cancel")
    assert finished.status_code == 409
    assert finished.json()["type"] == "urn:uait:problem:command-finished"
    assert api.post(f"/v1/commands/{uuid.uuid4()}/cancel").status_code == 404


def test_a_waiting_command_that_is_cancelled_is_rejected_as_cancelled(api: httpx.Client):
    assert api.post("/v1/admin/workers/knowledge/pause").status_code == 200
    try:
        time.sleep(1.5)  # every worker applies the pause within a second
        doc = f"c-{uuid.uuid4().hex[:8]}"
        accepted = api.post(
            "/v1/knowledge/documents", json={"document_id": doc, "title": "T", "text": "never"}
        )
        assert accepted.status_code == 202
        command_id = accepted.json()["command_id"]
        cancelled = api.post(f"/v1/commands/{command_id}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["status"] == "cancelling"
    finally:
        api.post("/v1/admin/workers/knowledge/resume")
    outcome = wait_status(api, command_id, {"succeeded", "rejected"})
    assert (outcome["status"], outcome["code"]) == ("rejected", "cancelled")
    assert api.get(f"/v1/knowledge/documents/{doc}").status_code == 404
