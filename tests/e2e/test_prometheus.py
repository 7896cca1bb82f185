"""A real Prometheus server scrapes the ingress, a worker and the projections."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from contexts import REGISTRY
from events.topics import command_topic
from tests.e2e.fixtures import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.e2e.fixtures import IngressStarter, Services

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def prometheus(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed: apt-get install prometheus (make test does)")
    root: Path = tmp_path_factory.mktemp("prometheus")
    env = services.env
    ingress = services.base_url.removeprefix("http://")
    targets = {
        "uait-ingress": ingress,
        "uait-worker": f"127.0.0.1:{env['UAIT_WORKER_METRICS_PORT']}",
        "uait-projections": f"127.0.0.1:{env['UAIT_PROJECTIONS_METRICS_PORT']}",
    }
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in targets.items()
    )
    config = root / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}")
    port = free_port()
    log = (root / "prometheus.log").open("wb")
    server = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (root / "prometheus.log").read_text()[-2000:]
            try:
                targets_up = query(url, "up")
                if len(targets_up) == 3 and all(float(s["value"][1]) == 1 for s in targets_up):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "Prometheus never saw all three targets up"
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    answer.raise_for_status()
    result: list[dict[str, Any]] = answer.json()["data"]["result"]
    return result


def eventually(url: str, promql: str, timeout: float = 20) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        result = query(url, promql)
        if result:
            return result
        assert time.monotonic() < deadline, f"no series for {promql}"
        time.sleep(0.5)


def test_prometheus_scrapes_requests_consumption_and_lag(prometheus: str, api) -> None:
    doc = f"prom-{uuid.uuid4().hex[:8]}"
    answer = api.post(
        "/v1/knowledge/documents",
        json={"document_id": doc, "title": "Scraped", "text": "seen by prometheus"},
        headers={"Prefer": "wait=20"},
    )
    assert answer.status_code == 201
    requests = eventually(
        prometheus,
        'uait_http_requests_total{job="uait-ingress",route="/v1/knowledge/documents",'
        'method="POST",status="201"} > 0',
    )
    assert requests[0]["metric"]["route"] == "/v1/knowledge/documents"
    consumed = eventually(
        prometheus, 'sum(uait_kafka_messages_consumed_total{job="uait-worker"}) > 0'
    )
    assert float(consumed[0]["value"][1]) >= 1
    lag = eventually(prometheus, 'uait_kafka_consumer_lag{job="uait-worker"}')
    topics = {s["metric"]["topic"] for s in lag}
    # The suite's traffic reached these two; the others show once they have consumed.
    assert {command_topic("knowledge"), command_topic("identity")} <= topics
    assert topics <= {command_topic(n) for n in REGISTRY.names}
    assert all(float(s["value"][1]) >= 0 for s in lag)
    position = eventually(
        prometheus,
        'uait_projection_position{job="uait-projections",projection="knowledge.documents"}',
    )
    assert float(position[0]["value"][1]) > 0


def test_the_metric_history_api_answers_from_prometheus(
    prometheus: str, start_ingress: IngressStarter, auth_headers: dict[str, str]
) -> None:
    ingress = start_ingress(UAIT_PROMETHEUS_URL=prometheus)
    with httpx.Client(base_url=ingress.base_url, timeout=10, headers=auth_headers) as client:
        eventually(prometheus, "uait_http_requests_total")
        answer = client.get("/v1/admin/metrics/uait_http_requests_total", params={"step": 1})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["name"] == "uait_http_requests_total"
        assert body["series"]
        assert all(s["points"] and "__name__" not in s["labels"] for s in body["series"])
        assert {"route", "method", "status", "job"} <= set(body["series"][0]["labels"])
        assert client.get("/v1/admin/metrics/uait_no_such_metric").status_code == 404
        assert client.get("/v1/admin/metrics/up or vector(1)").status_code == 422
        bad_range = {"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
        assert (
            client.get("/v1/admin/metrics/uait_http_requests_total", params=bad_range).status_code
            == 422
        )


def test_metric_history_without_prometheus_is_a_503_problem(api) -> None:
    answer = api.get("/v1/admin/metrics/uait_http_requests_total")
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
