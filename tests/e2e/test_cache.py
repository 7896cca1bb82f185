"""The read-model cache across real processes: ingresses, worker, projections, Redis, PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import string
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    from infra.stack import Endpoints
    from tests.e2e.fixtures import IngressStarter, Services

pytestmark = pytest.mark.e2e

DOCUMENTS = "/v1/knowledge/documents"
SEARCH = "/v1/knowledge/search"
WAIT = {"Prefer": "wait=20"}
DOCUMENT_CACHE = "knowledge.documents:document"
SEARCH_CACHE = "knowledge.documents:search"
INVALIDATION_BOUND_S = 2.0
"""README, "Cache": a change is served from the cache at most this long after its row commits
(here with TTLs of an hour, so only invalidation can bring it in time)."""
LONG_TTLS = {"UAIT_CACHE_TTL_S": "3600", "UAIT_CACHE_SEARCH_TTL_S": "3600"}


def rare_word() -> str:
    return "zq" + "".join(random.choices(string.ascii_lowercase, k=12))


def scrape(base_url: str) -> list[Any]:
    return list(text_string_to_metric_families(httpx.get(f"{base_url}/metrics", timeout=10).text))


def metric(base_url: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in scrape(base_url)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def ingest(client: httpx.Client, body: dict[str, Any]) -> int:
    """Ingest with ``Prefer: wait``; the position of the outcome, once the read model has it."""
    response = client.post(DOCUMENTS, json=body, headers=WAIT)
    assert response.status_code == 201, response.text
    position = int(response.json()["position"])
    seen = client.get(f"{DOCUMENTS}/{body['document_id']}", params={"after": position})
    assert seen.status_code == 200, seen.text
    return position


def invalidator_position(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT notification_id FROM knowledge_tracking WHERE application_name = %s",
            ("knowledge.cache",),
        ).fetchone()
    return int(row[0]) if row else 0


def wait_for_invalidator(database_url: str, position: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while invalidator_position(database_url) < position:
        assert time.monotonic() < deadline, "the cache invalidation did not follow the store"
        time.sleep(0.05)


def served_within(check: Any, bound_s: float) -> float:
    """Seconds until ``check()`` is true (polled); fails past ``bound_s``."""
    started = time.monotonic()
    while not check():
        elapsed = time.monotonic() - started
        assert elapsed < bound_s, f"still stale after {elapsed:.2f} s"
        time.sleep(0.01)
    return time.monotonic() - started


async def test_100_concurrent_misses_on_one_key_over_two_ingresses_run_the_loader_once(
    services: Services, start_ingress: IngressStarter, api: httpx.Client, endpoints: Endpoints
) -> None:
    auth = services.headers
    first = start_ingress(UAIT_CACHE_LOCK_TIMEOUT_S="30", **LONG_TTLS)
    second = start_ingress(UAIT_CACHE_LOCK_TIMEOUT_S="30", **LONG_TTLS)
    doc_id = f"stampede-{uuid.uuid4().hex[:8]}"
    position = ingest(api, {"document_id": doc_id, "title": "Stampede", "text": "Hot key."})
    wait_for_invalidator(endpoints.database_url, position)  # no bump can land mid-test
    path = f"{DOCUMENTS}/{doc_id}"
    async with (
        httpx.AsyncClient(base_url=first.base_url, timeout=60, headers=auth) as a,
        httpx.AsyncClient(base_url=second.base_url, timeout=60, headers=auth) as b,
    ):
        # Hold the read model so that every request misses at the same time: without
        # single-flight each of them would run the query once the lock is released.
        with psycopg.connect(endpoints.database_url) as lock:
            lock.execute("LOCK TABLE documents IN ACCESS EXCLUSIVE MODE")
            pending = asyncio.gather(*((a if i % 2 else b).get(path) for i in range(100)))
            await asyncio.sleep(1.5)
            lock.rollback()
        responses = await pending
    assert [r.status_code for r in responses] == [200] * 100
    assert {r.json()["document_id"] for r in responses} == {doc_id}
    assert {r.json()["title"] for r in responses} == {"Stampede"}
    bases = (first.base_url, second.base_url)
    loads = [metric(base, "uait_cache_loads_total", cache=DOCUMENT_CACHE) for base in bases]
    print(f"loader calls per ingress: {loads}")
    assert sum(loads) == 1
    # One Redis lookup per process (a miss each); the 98 others shared their process's lookup;
    # the process that did not load waited for the other's value.
    lookups = {
        result: sum(
            metric(base, "uait_cache_lookups_total", cache=DOCUMENT_CACHE, result=result)
            for base in bases
        )
        for result in ("miss", "shared", "hit")
    }
    assert lookups == {"miss": 2, "shared": 98, "hit": 0}
    filled = sum(
        metric(base, "uait_cache_flight_waits_total", cache=DOCUMENT_CACHE, outcome="filled")
        for base in bases
    )
    assert filled == 1


def test_a_changed_document_is_served_from_the_cache_within_the_bound_and_a_delete_is_404(
    start_ingress: IngressStarter, api: httpx.Client, auth_headers: dict[str, str]
) -> None:
    ingress = start_ingress(**LONG_TTLS)
    doc_id = f"fresh-{uuid.uuid4().hex[:8]}"
    old_word, new_word = rare_word(), rare_word()
    with httpx.Client(base_url=ingress.base_url, timeout=30, headers=auth_headers) as client:
        ingest(client, {"document_id": doc_id, "title": "First", "text": f"About {old_word}."})
        path = f"{DOCUMENTS}/{doc_id}"
        served_within(lambda: client.get(path).json().get("version") == 1, INVALIDATION_BOUND_S)
        hits = metric(
            ingress.base_url, "uait_cache_lookups_total", cache=DOCUMENT_CACHE, result="hit"
        )
        assert client.get(path).json()["title"] == "First"
        assert (
            metric(ingress.base_url, "uait_cache_lookups_total", cache=DOCUMENT_CACHE, result="hit")
            == hits + 1
        ), "the second read was not a cache hit"
        found = client.get(SEARCH, params={"q": old_word, "mode": "text"}).json()["results"]
        assert [r["document_id"] for r in found] == [doc_id]

        # A new version: once its row is committed, the cache serves it within the bound.
        ingest(client, {"document_id": doc_id, "title": "Second", "text": f"About {new_word}."})
        took = served_within(lambda: client.get(path).json()["version"] == 2, INVALIDATION_BOUND_S)
        assert client.get(path).json()["title"] == "Second"
        searched = served_within(
            lambda: (
                client.get(SEARCH, params={"q": old_word, "mode": "text"}).json()["results"] == []
            ),
            INVALIDATION_BOUND_S,
        )
        found = client.get(SEARCH, params={"q": new_word, "mode": "text"}).json()["results"]
        assert [r["document_id"] for r in found] == [doc_id]

        # Deleted: 404 from the cache too.
        deleted = client.delete(path, headers=WAIT)
        assert deleted.status_code == 200, deleted.text
        position = deleted.json()["position"]
        assert client.get(path, params={"after": position}).status_code == 404
        gone = served_within(lambda: client.get(path).status_code == 404, INVALIDATION_BOUND_S)
        print(
            f"served after the row changed: new version {took * 1000:.0f} ms, search "
            f"{searched * 1000:.0f} ms, delete {gone * 1000:.0f} ms"
        )
        bypassed = metric(
            ingress.base_url, "uait_cache_lookups_total", cache=DOCUMENT_CACHE, result="bypass"
        )
        assert bypassed >= 3, "?after= reads did not bypass the cache"


def test_pool_metrics_appear_on_the_metrics_of_a_real_ingress_with_plausible_values(
    start_ingress: IngressStarter, auth_headers: dict[str, str]
) -> None:
    ingress = start_ingress(UAIT_DB_POOL_MAX="7", UAIT_REDIS_POOL_MAX="33")
    with httpx.Client(base_url=ingress.base_url, timeout=30, headers=auth_headers) as client:
        for _ in range(5):
            assert client.get(DOCUMENTS, params={"limit": 1}).status_code == 200
    base = ingress.base_url
    pool = {"pool": "ingress"}
    assert metric(base, "uait_db_pool_max_connections", **pool) == 7
    idle = metric(base, "uait_db_pool_connections", state="idle", **pool)
    in_use = metric(base, "uait_db_pool_connections", state="in_use", **pool)
    assert 1 <= idle + in_use <= 7
    assert metric(base, "uait_db_pool_requests_waiting", **pool) == 0
    assert metric(base, "uait_db_pool_requests_total", **pool) >= 1
    assert metric(base, "uait_db_pool_request_errors_total", **pool) == 0
    assert metric(base, "uait_redis_pool_max_connections", **pool) == 33
    r_idle = metric(base, "uait_redis_pool_connections", state="idle", **pool)
    r_in_use = metric(base, "uait_redis_pool_connections", state="in_use", **pool)
    assert 1 <= r_idle + r_in_use <= 33
    print(f"db pool idle {idle:.0f}, in use {in_use:.0f}; redis {r_idle:.0f}, {r_in_use:.0f}")
