"""Rate limits and idempotency keys across real ingress processes sharing Redis."""

from __future__ import annotations

import asyncio
import json
import random
import re
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.settings import Settings
from infra.stack import EmbeddedStack
from tests.e2e.fixtures import new_api_key

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.e2e.fixtures import IngressStarter, Services

pytestmark = pytest.mark.e2e

DOCUMENTS = "/v1/knowledge/documents"
COMMANDS = "/v1/commands"
PROBLEM_JSON = "application/problem+json"
BEHIND_PROXY = {"UAIT_TRUSTED_PROXIES": "127.0.0.1/32", "UAIT_RATE_LIMIT_EXEMPT": ""}


AUTH: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _authenticated(services: Services) -> None:
    """Every request of a test carries an API key of its own: authenticated requests count
    against their key, so each test starts with full buckets."""
    AUTH.clear()
    AUTH.update(new_api_key(services))


def new_client_ip() -> str:
    """A client address of this test alone (the ingress trusts X-Forwarded-For from 127.0.0.1)."""
    return f"198.18.{random.randrange(256)}.{random.randrange(1, 255)}"


def policies(**specs: dict[str, Any]) -> str:
    return json.dumps(specs)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    return body


def metric(base_url: str, name: str, **labels: str) -> float:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_two_ingresses_sharing_redis_let_exactly_the_limit_through_of_200_requests(
    start_ingress: IngressStarter,
) -> None:
    env = {
        **BEHIND_PROXY,
        "UAIT_RATE_LIMIT_POLICIES": policies(default={"limit": 25, "period_s": 3600}),
    }
    first, second = start_ingress(**env), start_ingress(**env)
    headers = {"X-Forwarded-For": new_client_ip(), **AUTH}
    async with (
        httpx.AsyncClient(base_url=first.base_url, timeout=30, headers=headers) as a,
        httpx.AsyncClient(base_url=second.base_url, timeout=30, headers=headers) as b,
    ):
        started = time.monotonic()
        responses = await asyncio.gather(
            *((a if i % 2 else b).get(COMMANDS, params={"limit": 1}) for i in range(200))
        )
        elapsed = time.monotonic() - started
    print(f"200 concurrent reads over two ingresses in {elapsed:.2f} s")
    passed = [r for r in responses if r.status_code != 429]
    refused = [r for r in responses if r.status_code == 429]
    assert len(passed) == 25
    assert len(refused) == 175
    assert {r.status_code for r in passed} == {200}
    # Each ingress answered half; alone, each would have let 25 through.
    answered_by = [str(r.url).split("/v1")[0] for r in responses]
    assert answered_by.count(first.base_url) == answered_by.count(second.base_url) == 100
    assert sorted(int(r.headers["ratelimit-remaining"]) for r in passed) == list(range(25))
    for r in passed:
        assert r.headers["ratelimit-policy"] == '"default";q=25;w=3600'
        assert r.headers["ratelimit-limit"] == "25"
        remaining = r.headers["ratelimit-remaining"]
        assert re.fullmatch(rf'"default";r={remaining};t=\d+', r.headers["ratelimit"])
        assert "retry-after" not in r.headers
    for r in refused:
        body = problem(r, 429)
        assert body["type"] == "urn:uait:problem:rate-limited"
        # One unit frees up every 3600 / 25 = 144 s.
        assert 140 <= int(r.headers["retry-after"]) <= 144
        assert r.headers["ratelimit-remaining"] == "0"
        assert r.headers["ratelimit"].startswith('"default";r=0;t=')
    # Health, metrics and docs are never limited.
    for path in ("/livez", "/metrics", "/openapi.json"):
        response = httpx.get(f"{first.base_url}{path}", headers=headers, timeout=10)
        assert response.status_code == 200
        assert "ratelimit" not in response.headers
    assert (
        metric(first.base_url, "uait_ratelimit_decisions_total", decision="limited")
        + metric(second.base_url, "uait_ratelimit_decisions_total", decision="limited")
        == 175
    )


def test_a_write_refused_by_the_knowledge_limit_leaves_the_read_budget_alone(
    start_ingress: IngressStarter,
) -> None:
    env = {
        **BEHIND_PROXY,
        "UAIT_RATE_LIMIT_POLICIES": policies(
            knowledge={"limit": 2, "period_s": 3600}, default={"limit": 10, "period_s": 3600}
        ),
    }
    ingress = start_ingress(**env)
    with httpx.Client(
        base_url=ingress.base_url, timeout=30, headers={"X-Forwarded-For": new_client_ip(), **AUTH}
    ) as client:
        writes = [
            client.post(DOCUMENTS, json={"title": "Limited", "text": f"Write {i}."})
            for i in range(4)
        ]
        assert [w.status_code for w in writes] == [202, 202, 429, 429]
        assert writes[0].headers["ratelimit-policy"] == (
            '"knowledge";q=2;w=3600, "default";q=10;w=3600'
        )
        assert problem(writes[2], 429)["detail"].startswith("over the knowledge rate limit")
        read = client.get(COMMANDS, params={"limit": 1})
        assert read.status_code == 200
        assert read.headers["ratelimit-remaining"] == str(10 - 2 - 1)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedStack]:
    """A Redis of this test alone (so it can be stopped), started by the embedded stack."""
    stack = EmbeddedStack(
        Settings(kafka_bootstrap="unused:1", database_url="unused", redis_url=""),
        data_dir=tmp_path / "stack",
    )
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def test_with_redis_gone_reads_fail_open_and_closed_policies_refuse_with_503(
    start_ingress: IngressStarter, private_redis: EmbeddedStack
) -> None:
    endpoints = private_redis.start()
    ingress = start_ingress(
        **BEHIND_PROXY,
        UAIT_REDIS_URL=endpoints.redis_url,
        UAIT_RATE_LIMIT_POLICIES=policies(knowledge={"fail_open": False}),
    )
    with httpx.Client(
        base_url=ingress.base_url, timeout=30, headers={"X-Forwarded-For": new_client_ip(), **AUTH}
    ) as client:
        before = client.get(COMMANDS, params={"limit": 1})
        assert before.status_code == 200
        assert before.headers["ratelimit-limit"] == "100"

        private_redis.stop()

        started = time.monotonic()
        read = client.get(COMMANDS, params={"limit": 1})
        read_s = time.monotonic() - started
        assert read.status_code == 200
        assert "ratelimit" not in read.headers
        started = time.monotonic()
        write = client.post(DOCUMENTS, json={"title": "Closed", "text": "Not accepted."})
        write_s = time.monotonic() - started
        body = problem(write, 503)
        assert body["type"] == "urn:uait:problem:rate-limiter-unavailable"
        assert int(write.headers["retry-after"]) >= 1
        print(f"with Redis gone: read {read_s * 1e3:.0f} ms, refused write {write_s * 1e3:.0f} ms")
        assert read_s < 2
        assert write_s < 2
    base = ingress.base_url
    name = "uait_ratelimit_decisions_total"
    assert metric(base, name, policy="default", decision="failed_open") >= 1
    assert metric(base, name, policy="knowledge", decision="failed_closed") == 1


def test_an_idempotent_replay_returns_the_first_answer_and_publishes_once(
    start_ingress: IngressStarter, services: Services
) -> None:
    ingress = start_ingress(**BEHIND_PROXY)
    published = "uait_kafka_messages_published_total"
    doc = {"document_id": f"idem-{uuid.uuid4().hex[:8]}", "title": "Once", "text": "Only once."}
    key = f"key-{uuid.uuid4()}"
    with httpx.Client(
        base_url=ingress.base_url, timeout=30, headers={"X-Forwarded-For": new_client_ip(), **AUTH}
    ) as client:
        sent_before = metric(ingress.base_url, published, outcome="ok")
        answers = [
            client.post(DOCUMENTS, json=doc, headers={"Idempotency-Key": key}) for _ in range(3)
        ]
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert answers[1].json() == answers[0].json() == answers[2].json()
        assert answers[1].headers["location"] == answers[0].headers["location"]
        assert "idempotent-replayed" not in answers[0].headers
        assert answers[1].headers["idempotent-replayed"] == "true"
        assert metric(ingress.base_url, published, outcome="ok") - sent_before == 1
        command_id = answers[0].json()["command_id"]
        assert client.get(f"{COMMANDS}/{command_id}").status_code == 200

        changed = client.post(
            DOCUMENTS, json={**doc, "text": "Other."}, headers={"Idempotency-Key": key}
        )
        assert problem(changed, 422)["type"] == "urn:uait:problem:idempotency-key-reused"
        other_path = client.delete(
            f"{DOCUMENTS}/{doc['document_id']}", headers={"Idempotency-Key": key}
        )
        problem(other_path, 422)

        # The key is the principal's: another API key with the same key is a request of its own.
        elsewhere = client.post(
            DOCUMENTS,
            json=doc,
            headers={
                "Idempotency-Key": key,
                "X-Forwarded-For": new_client_ip(),
                **new_api_key(services),
            },
        )
        assert elsewhere.status_code == 202
        assert elsewhere.json()["command_id"] != command_id

        for bad in ("", "x" * 256, "caf\u00e9"):
            response = client.post(
                DOCUMENTS,
                json=doc,
                headers={"Idempotency-Key": bad.encode("utf-8")},  # type: ignore[dict-item]
            )
            assert problem(response, 400)["type"] == "urn:uait:problem:idempotency-key-invalid"


def test_a_duplicate_in_flight_is_409_and_a_failed_publish_frees_the_key(
    start_ingress: IngressStarter,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)  # accepts and never answers: every publish waits for its timeout
        ingress = start_ingress(
            **BEHIND_PROXY,
            UAIT_KAFKA_BOOTSTRAP=f"127.0.0.1:{silent.getsockname()[1]}",
            UAIT_PUBLISH_TIMEOUT_S="3",
        )
        headers = {
            "X-Forwarded-For": new_client_ip(),
            "Idempotency-Key": f"k-{uuid.uuid4()}",
            **AUTH,
        }
        doc = {"title": "Stuck", "text": "The broker never answers."}

        async def race() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(
                base_url=ingress.base_url, timeout=30, headers=headers
            ) as c:
                first = asyncio.create_task(c.post(DOCUMENTS, json=doc))
                await asyncio.sleep(1.0)
                duplicate = await c.post(DOCUMENTS, json=doc)
                return await first, duplicate

        first, duplicate = asyncio.run(race())
        assert problem(duplicate, 409)["type"] == "urn:uait:problem:idempotency-in-flight"
        assert int(duplicate.headers["retry-after"]) >= 1
        problem(first, 503)
        # The 503 released the key: the retry is tried again (and fails the same way), not 409.
        retry = httpx.post(f"{ingress.base_url}{DOCUMENTS}", json=doc, headers=headers, timeout=30)
        problem(retry, 503)
