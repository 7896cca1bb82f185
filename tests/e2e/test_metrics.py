"""Each process serves its own /metrics, and the series move when work flows through."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from contexts import REGISTRY

if TYPE_CHECKING:
    from tests.e2e.fixtures import Services

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(url, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= lbls)


def test_ingress_worker_and_projections_each_export_their_series(services: Services, api):
    env = services.env
    worker_url = f"http://127.0.0.1:{env['UAIT_WORKER_METRICS_PORT']}/metrics"
    projections_url = f"http://127.0.0.1:{env['UAIT_PROJECTIONS_METRICS_PORT']}/metrics"
    before = scrape(worker_url)
    doc = f"metrics-{uuid.uuid4().hex[:8]}"
    answer = api.post(
        "/v1/knowledge/documents",
        json={"document_id": doc, "title": "Metrics", "text": "counted"},
        headers={"Prefer": "wait=20"},
    )
    assert answer.status_code == 201
    assert api.get(f"/v1/knowledge/documents/{doc}").status_code == 200
    assert api.get("/v1/knowledge/documents/no-such-doc").status_code == 404

    ingress = scrape(f"{services.base_url}/metrics")
    route = "/v1/knowledge/documents/{document_id}"
    assert value(ingress, "uait_http_requests_total", route=route, status="200") >= 1
    assert value(ingress, "uait_http_requests_total", route=route, status="404") >= 1
    assert value(ingress, "uait_http_request_duration_seconds_count", route=route) >= 2
    # the POST asked to wait for its outcome: timed apart, out of the latency SLO
    waited = {"route": "/v1/knowledge/documents", "method": "POST"}
    assert value(ingress, "uait_http_waiting_request_duration_seconds_count", **waited) >= 1
    # route templates only: no raw document ids as label values
    assert not any(doc in str(labels) for _, labels in ingress)
    assert (
        value(
            ingress,
            "uait_kafka_messages_published_total",
            topic="uait.commands.knowledge",
            outcome="ok",
        )
        >= 1
    )

    after = scrape(worker_url)
    key = {"context": "knowledge", "type": "IngestDocument", "result": "succeeded"}
    assert value(after, "uait_commands_total", **key) > value(before, "uait_commands_total", **key)
    assert value(after, "uait_worker_batch_size_count", context="knowledge") >= 1
    assert value(after, "uait_eventstore_events_appended_total", context="knowledge") >= 2
    assert any(name == "uait_kafka_consumer_lag" for name, _ in after)

    deadline = time.monotonic() + 10
    while True:
        projections = scrape(projections_url)
        position = value(projections, "uait_projection_position", projection="knowledge.documents")
        if position >= answer.json()["position"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert position >= answer.json()["position"]
    assert value(projections, "uait_projection_running", projection="knowledge.documents") == 1
    assert value(projections, "uait_projection_events_total", projection="knowledge.documents") > 0


def test_readiness_reports_each_dependency(api):
    response = api.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "pass",
        "checks": {"postgres": "pass", "kafka": "pass", "redis": "pass", "projections": "pass"},
    }
    health = api.get("/health")
    assert health.status_code == 200
    assert health.headers["content-type"] == "application/health+json"
    body = health.json()
    assert body["serviceId"] == "uait-ingress"
    assert body["checks"]["postgres:responseTime"][0]["observedUnit"] == "ms"
    assert set(body["checks"]) == {
        "postgres:responseTime",
        "kafka:responseTime",
        "redis:responseTime",
        "projections:responseTime",
    }


def test_workers_can_be_paused_and_resumed_over_http(api):
    running = dict.fromkeys(REGISTRY.names, "running")
    assert api.get("/v1/admin/workers").json() == {"contexts": running}
    paused = api.post("/v1/admin/workers/knowledge/pause")
    assert paused.status_code == 200
    assert paused.json() == {"contexts": {**running, "knowledge": "paused"}}
    resumed = api.post("/v1/admin/workers/knowledge/resume")
    assert resumed.json() == {"contexts": running}
    assert api.post("/v1/admin/workers/nope/pause").status_code == 404
    assert api.post("/v1/admin/workers/knowledge/explode").status_code == 422


def test_workers_and_projections_serve_health_on_their_ops_port(services: Services):
    env = services.env
    for port, component in (
        (env["UAIT_WORKER_METRICS_PORT"], "kafka"),
        (env["UAIT_PROJECTIONS_METRICS_PORT"], "projections"),
    ):
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{base}/health", timeout=5)
        assert health.status_code == 200
        assert health.headers["content-type"] == "application/health+json"
        body = health.json()
        assert body["status"] in ("pass", "warn")
        checks = body["checks"]
        assert checks["postgres:responseTime"][0]["status"] == "pass"
        assert checks["postgres:responseTime"][0]["observedUnit"] == "ms"
        assert checks["redis:responseTime"][0]["status"] == "pass"
        assert checks[f"{component}:responseTime"][0]["status"] in ("pass", "warn")
        assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200
        assert httpx.get(f"{base}/livez", timeout=5).json() == {"status": "pass"}
