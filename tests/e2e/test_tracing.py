"""One HTTP request followed through Kafka, the worker, the event store and the projections.

The spans are exported by the real ingress, worker and projection processes, each to its own
file, so broken header propagation between processes would show as a broken trace.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from infra.secrets import generate as generate_secrets
from infra.settings import Settings
from infra.stack import EmbeddedStack, create_database, drop_database
from tests.e2e.fixtures import CLI, bootstrap_admin, spawn, start_ingress_process
from uait.processes import prepare

if TYPE_CHECKING:
    from pathlib import Path

    from infra.stack import Endpoints

pytestmark = pytest.mark.e2e


def load_spans(files: list[Path]) -> list[dict[str, Any]]:
    spans = []
    for path in files:
        if path.exists():
            spans += [json.loads(line) for line in path.read_text().splitlines() if line]
    return spans


def test_one_request_is_one_trace_across_every_process(
    endpoints: Endpoints, tmp_path: Path
) -> None:
    dbname = f"uait_trace_{uuid.uuid4().hex[:8]}"
    database_url = create_database(endpoints.database_url, dbname)
    base = Settings(database_url=database_url, redis_url=endpoints.redis_url)
    processes = []
    try:
        with EmbeddedStack(base, data_dir=tmp_path / "kafka") as ep:
            prepare(base.model_copy(update={"kafka_bootstrap": ep.kafka_bootstrap}))
            files = {name: tmp_path / f"{name}.jsonl" for name in ("ingress", "worker", "proj")}
            env = {
                "PATH": "/usr/bin:/bin",
                "UAIT_KAFKA_BOOTSTRAP": ep.kafka_bootstrap,
                "UAIT_DATABASE_URL": database_url,
                "UAIT_REDIS_URL": endpoints.redis_url,
                "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000",
                **generate_secrets(),
            }
            processes.append(
                spawn(
                    "worker",
                    [*CLI, "worker"],
                    {**env, "UAIT_TRACES_FILE": str(files["worker"])},
                    tmp_path,
                )
            )
            processes.append(
                spawn(
                    "proj",
                    [*CLI, "projections", "run"],
                    {**env, "UAIT_TRACES_FILE": str(files["proj"])},
                    tmp_path,
                )
            )
            ingress = start_ingress_process(
                "ingress", {**env, "UAIT_TRACES_FILE": str(files["ingress"])}, tmp_path
            )
            processes.append(ingress)
            admin = bootstrap_admin(ingress.base_url, env)
            doc = f"traced-{uuid.uuid4().hex[:8]}"
            answer = httpx.post(
                f"{ingress.base_url}/v1/knowledge/documents",
                json={"document_id": doc, "title": "Traced", "text": "follow me"},
                headers={"Prefer": "wait=30", **admin.headers},
                timeout=40,
            )
            assert answer.status_code == 201, answer.text
            command_id = answer.json()["command_id"]

            deadline = time.monotonic() + 15
            while True:
                spans = load_spans(list(files.values()))
                post = [
                    s
                    for s in spans
                    if s["name"] == "POST /v1/knowledge/documents"
                    and s["attributes"].get("http.response.status_code") == 201
                ]
                trace_id = post[0]["context"]["trace_id"] if post else None
                mine = [s for s in spans if s["context"]["trace_id"] == trace_id]
                names = {s["name"] for s in mine}
                # The cache invalidation follows the documents projection: its span comes last.
                if {
                    "project knowledge.documents",
                    "project knowledge.cache",
                    "append knowledge_events",
                } <= names:
                    break
                assert time.monotonic() < deadline, f"incomplete trace: {sorted(names)}"
                time.sleep(0.3)
    finally:
        for p in processes:
            p.stop()
        drop_database(endpoints.database_url, dbname)

    by_name = {s["name"]: s for s in mine}
    assert len(mine) == len(by_name) == 7, sorted(s["name"] for s in mine)
    server = by_name["POST /v1/knowledge/documents"]
    send = by_name["send uait.commands.knowledge"]
    process = by_name["process uait.commands.knowledge"]
    append = by_name["append knowledge_events"]
    projected = by_name["project knowledge.documents"]
    outcome = by_name["project knowledge.command_outcomes"]
    invalidated = by_name["project knowledge.cache"]

    def span_id(s: dict[str, Any]) -> str:
        return str(s["context"]["span_id"])

    # parent/child links across three processes
    assert send["parent_id"] == span_id(server)
    assert process["parent_id"] == span_id(send)
    assert append["parent_id"] == span_id(process)
    assert projected["parent_id"] == span_id(process)
    assert outcome["parent_id"] == span_id(process)
    assert invalidated["parent_id"] == span_id(process)
    assert [link["context"]["span_id"] for link in process["links"]] == [span_id(send)]
    services = {s["resource"]["attributes"]["service.name"] for s in mine}
    assert services == {"uait-ingress", "uait-worker", "uait-projections"}
    assert (server["kind"], send["kind"], process["kind"]) == (
        "SpanKind.SERVER",
        "SpanKind.PRODUCER",
        "SpanKind.CONSUMER",
    )
    # messaging semantic conventions
    for s in (send, process):
        assert s["attributes"]["messaging.system"] == "kafka"
        assert s["attributes"]["messaging.destination.name"] == "uait.commands.knowledge"
        assert s["attributes"]["messaging.message.id"] == command_id
    assert send["attributes"]["messaging.operation.type"] == "send"
    assert process["attributes"]["messaging.operation.type"] == "process"
    assert process["attributes"]["messaging.consumer.group.name"] == "uait.workers.knowledge"
    assert (
        process["attributes"]["messaging.destination.partition.id"]
        == (send["attributes"]["messaging.destination.partition.id"])
    )
    assert (
        process["attributes"]["messaging.kafka.offset"]
        == send["attributes"]["messaging.kafka.offset"]
    )
    assert process["attributes"]["uait.command.result"] == "succeeded"
    assert server["attributes"]["http.route"] == "/v1/knowledge/documents"
