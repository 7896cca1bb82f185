"""The HTTP API end to end: ingress -> Kafka -> worker -> event store -> projections -> queries."""

from __future__ import annotations

import random
import socket
import string
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.fixtures import IngressStarter

pytestmark = pytest.mark.e2e

DOCUMENTS = "/v1/knowledge/documents"
SEARCH = "/v1/knowledge/search"
COMMANDS = "/v1/commands"
WAIT = {"Prefer": "wait=20"}
PROBLEM_JSON = "application/problem+json"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def new_id(prefix: str = "doc") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def rare_word() -> str:
    """A word no other document contains (letters only, so the parser keeps it whole)."""
    return "zq" + "".join(random.choices(string.ascii_lowercase, k=12))


def filler(words: int) -> str:
    vocabulary = ["river", "stone", "window", "garden", "letter", "morning", "kettle", "lantern"]
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(words))


def ingest(api: httpx.Client, body: dict[str, Any], expected: int = 201) -> dict[str, Any]:
    response = api.post(DOCUMENTS, json=body, headers=WAIT)
    assert response.status_code == expected, response.text
    result: dict[str, Any] = response.json()
    return result


def search(api: httpx.Client, q: str, after: int, mode: str = "text") -> list[dict[str, Any]]:
    """Full-text by default: these tests are about words (tests/e2e/test_search.py: vectors)."""
    response = api.get(SEARCH, params={"q": q, "after": after, "mode": mode})
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    return results


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"]
    return body


def wait_for_status(
    api: httpx.Client, url: str, wanted: str, timeout_s: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    seen: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        response = api.get(url)
        assert response.status_code == 200, response.text
        seen = response.json()
        if seen["status"] == wanted:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"command never reached {wanted!r}; last seen {seen}")


@pytest.fixture
def own_client(base_url: str, auth_headers: dict[str, str]) -> Iterator[httpx.Client]:
    """A client of its own, for requests that may end in a 500 (uvicorn then drops the
    connection, which must not break the next test's request on the shared client)."""
    with httpx.Client(base_url=base_url, timeout=60.0, headers=auth_headers) as client:
        yield client


# -- ingest, read, search ----------------------------------------------------------------------


def test_an_ingested_document_is_searchable_and_readable_at_its_position(
    api: httpx.Client,
) -> None:
    doc_id, word = new_id(), rare_word()
    text = f"{filler(250)} The {word} appears here once. {filler(300)}"
    created = ingest(
        api,
        {"document_id": doc_id, "title": "Field notes", "text": text, "tags": ["e2e", "notes"]},
    )
    assert created["status"] == "succeeded"
    assert created["document_id"] == doc_id
    position = created["position"]
    assert isinstance(position, int)
    assert position > 0

    results = search(api, word, position)
    assert results, f"no result for {word!r}"
    assert results[0]["document_id"] == doc_id
    assert "<mark>" in results[0]["snippet"]
    assert word in results[0]["snippet"].lower()

    doc = api.get(f"{DOCUMENTS}/{doc_id}", params={"after": position})
    assert doc.status_code == 200, doc.text
    got = doc.json()
    assert got["title"] == "Field notes"
    assert got["tags"] == ["e2e", "notes"]
    assert got["version"] == 1
    assert got["text"] == text
    assert got["chunk_count"] >= 2  # ~3,500 characters in chunks of ~800
    assert "chunks" not in got

    with_chunks = api.get(
        f"{DOCUMENTS}/{doc_id}", params={"after": position, "include_chunks": "true"}
    ).json()
    chunks = with_chunks["chunks"]
    assert len(chunks) == got["chunk_count"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert chunk["text"] == text[chunk["start"] : chunk["end"]]
    assert chunks[0]["start"] == 0
    assert chunks[-1]["end"] == len(text)


def test_a_command_without_prefer_is_accepted_and_its_lifecycle_reaches_succeeded(
    api: httpx.Client,
) -> None:
    doc_id = new_id()
    response = api.post(DOCUMENTS, json={"document_id": doc_id, "title": "Later", "text": "Soon."})
    assert response.status_code == 202, response.text
    accepted = response.json()
    uuid.UUID(accepted["command_id"])
    assert accepted["document_id"] == doc_id
    assert accepted["status_url"].endswith(f"{COMMANDS}/{accepted['command_id']}")
    assert response.headers["location"] == accepted["status_url"]

    done = wait_for_status(api, accepted["status_url"], "succeeded")
    assert done["command_id"] == accepted["command_id"]
    assert done["command_type"] == "IngestDocument"
    assert done["detail"] == "version 1"
    assert done["attempts"] >= 1
    for stamp in ("accepted_at", "started_at", "finished_at"):
        assert done[stamp], f"{stamp} missing in {done}"
    accepted_at, started_at, finished_at = (
        datetime.fromisoformat(done[k]) for k in ("accepted_at", "started_at", "finished_at")
    )
    assert accepted_at <= started_at <= finished_at
    assert done["position"] > 0


def test_a_word_in_the_title_ranks_above_the_same_word_in_the_body(api: httpx.Client) -> None:
    word = rare_word()
    in_title, in_body = new_id("title"), new_id("body")
    first = ingest(
        api, {"document_id": in_title, "title": f"About {word}", "text": filler(40) + "."}
    )
    second = ingest(
        api,
        {"document_id": in_body, "title": "About something", "text": f"{filler(40)} {word}."},
    )
    results = search(api, word, max(first["position"], second["position"]))
    assert [r["document_id"] for r in results] == [in_title, in_body]
    assert results[0]["rank"] > results[1]["rank"]


def test_reingesting_new_text_makes_version_2_and_identical_content_is_unchanged(
    api: httpx.Client,
) -> None:
    doc_id, old_word, new_word = new_id(), rare_word(), rare_word()
    ingest(api, {"document_id": doc_id, "title": "Draft", "text": f"Draft with {old_word}."})
    revised = {"document_id": doc_id, "title": "Draft", "text": f"Revised with {new_word}."}
    second = ingest(api, revised)
    assert second["detail"] == "version 2"

    doc = api.get(f"{DOCUMENTS}/{doc_id}", params={"after": second["position"]}).json()
    assert doc["version"] == 2
    assert doc["text"] == revised["text"]
    assert [r["document_id"] for r in search(api, new_word, second["position"])] == [doc_id]
    assert search(api, old_word, second["position"]) == []

    again = ingest(api, revised)
    assert again["status"] == "succeeded"
    assert again["detail"] == "unchanged"
    assert again["command_id"] != second["command_id"]
    same = api.get(f"{DOCUMENTS}/{doc_id}", params={"after": again["position"]}).json()
    assert same["version"] == 2
    assert same["position"] == doc["position"]


def test_a_deleted_document_is_gone_and_deleting_it_again_is_rejected_as_not_found(
    api: httpx.Client,
) -> None:
    doc_id, word = new_id(), rare_word()
    ingest(api, {"document_id": doc_id, "title": "Ephemeral", "text": f"Short-lived {word}."})

    deleted = api.delete(f"{DOCUMENTS}/{doc_id}", headers=WAIT)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "succeeded"
    position = deleted.json()["position"]

    missing = api.get(f"{DOCUMENTS}/{doc_id}", params={"after": position})
    assert_problem(missing, 404)
    assert search(api, word, position) == []

    again = api.delete(f"{DOCUMENTS}/{doc_id}", headers=WAIT)
    body = assert_problem(again, 404)
    assert body["type"] == "urn:uait:problem:rejected:not_found"
    assert body["code"] == "not_found"
    assert "does not exist" in body["detail"]
    assert body["command_id"] != deleted.json()["command_id"]
    rejected = api.get(again.headers["location"]).json()
    assert rejected["status"] == "rejected"
    assert rejected["code"] == "not_found"


# -- bad input ---------------------------------------------------------------------------------


def test_a_malformed_json_body_is_a_422_problem(api: httpx.Client) -> None:
    response = api.post(
        DOCUMENTS, content=b'{"title": "t", "text": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["errors"]
    assert body["errors"][0]["type"] == "json_invalid"


@pytest.mark.parametrize(
    ("payload", "field", "error_type"),
    [
        pytest.param({"title": 5, "text": "x"}, "body.title", "string_type", id="title-not-text"),
        pytest.param({"title": "t", "text": ["x"]}, "body.text", "string_type", id="text-list"),
        pytest.param({"title": "t"}, "body.text", "missing", id="text-missing"),
        pytest.param(
            {"title": "t", "text": "x", "tags": "a"}, "body.tags", "list_type", id="tags-string"
        ),
        pytest.param(
            {"title": "t", "text": "x", "colour": "red"},
            "body.colour",
            "extra_forbidden",
            id="unknown-field",
        ),
        pytest.param({"title": "t", "text": " \n\t  "}, "body.text", "value_error", id="blank"),
        pytest.param(
            {"document_id": "no spaces!", "title": "t", "text": "x"},
            "body.document_id",
            "string_pattern_mismatch",
            id="bad-document-id",
        ),
    ],
)
def test_an_invalid_document_is_a_422_problem_naming_the_field(
    api: httpx.Client, payload: dict[str, Any], field: str, error_type: str
) -> None:
    body = assert_problem(api.post(DOCUMENTS, json=payload, headers=WAIT), 422)
    assert body["type"] == "urn:uait:problem:validation"
    assert {"field": field, "type": error_type} in [
        {"field": e["field"], "type": e["type"]} for e in body["errors"]
    ], body["errors"]
    assert "command_id" not in body


def test_a_rejected_document_is_not_ingested(api: httpx.Client) -> None:
    doc_id = new_id()
    payload = {"document_id": doc_id, "title": "t", "text": "   "}
    assert_problem(api.post(DOCUMENTS, json=payload, headers=WAIT), 422)
    probe = ingest(api, {"document_id": new_id("probe"), "title": "Probe", "text": "Later."})
    assert_problem(api.get(f"{DOCUMENTS}/{doc_id}", params={"after": probe["position"]}), 404)


def test_a_text_over_the_limit_is_a_413_problem(api: httpx.Client) -> None:
    text = "a" * (600 * 1024)  # the default limit is 512 KiB
    response = api.post(DOCUMENTS, json={"title": "Huge", "text": text}, headers=WAIT)
    body = assert_problem(response, 413)
    assert str(512 * 1024) in body["detail"]


def test_a_body_far_over_the_limit_is_refused_before_it_is_parsed(api: httpx.Client) -> None:
    response = api.post(
        DOCUMENTS, json={"title": "Huger", "text": "b" * (2 * 1024 * 1024)}, headers=WAIT
    )
    assert_problem(response, 413)


def test_a_chunked_body_over_the_limit_is_a_413_problem(api: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):  # 2.5 MiB, no Content-Length
            yield b"x" * (64 * 1024)

    response = api.post(DOCUMENTS, content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413)


def test_a_text_with_a_lone_surrogate_is_a_422_problem(own_client: httpx.Client) -> None:
    response = own_client.post(
        DOCUMENTS,
        content=b'{"title": "t", "text": "half \\ud800 a pair"}',  # JSON escape, not UTF-8
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 422)


def test_a_search_query_with_a_nul_character_is_a_422_problem(own_client: httpx.Client) -> None:
    assert_problem(own_client.get(SEARCH, params={"q": "a\x00b"}), 422)


def test_an_unknown_document_is_a_404_problem(api: httpx.Client) -> None:
    doc_id = new_id("unknown")
    body = assert_problem(api.get(f"{DOCUMENTS}/{doc_id}"), 404)
    assert body["instance"] == f"{DOCUMENTS}/{doc_id}"
    assert doc_id in body["detail"]


def test_an_unknown_command_is_a_404_problem(api: httpx.Client) -> None:
    assert_problem(api.get(f"{COMMANDS}/{uuid.uuid4()}"), 404)


def test_a_command_id_that_is_not_a_uuid_is_a_422_problem(api: httpx.Client) -> None:
    body = assert_problem(api.get(f"{COMMANDS}/not-a-uuid"), 422)
    assert [e["field"] for e in body["errors"]] == ["path.command_id"]


# -- paging ------------------------------------------------------------------------------------


Page = list[dict[str, Any]]


def page_through(api: httpx.Client, path: str, limit: int, **params: Any) -> list[Page]:
    pages: list[Page] = []
    cursor = None
    for _ in range(1000):
        query = {"limit": limit, **params, **({"cursor": cursor} if cursor else {})}
        response = api.get(path, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= limit
        pages.append(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
        assert len(page["items"]) == limit  # only a full page may have a next one
    raise AssertionError("paging did not end")


def test_documents_page_through_everything_once_in_id_order(api: httpx.Client) -> None:
    prefix = new_id("page")
    mine = [f"{prefix}-{i}" for i in range(5)]
    positions = [
        ingest(api, {"document_id": d, "title": f"Page {d}", "text": "Paged."})["position"]
        for d in mine
    ]
    pages = page_through(api, DOCUMENTS, 2, after=max(positions))
    ids = [item["document_id"] for page in pages for item in page]
    assert len(pages) >= 3
    assert ids == sorted(ids)
    assert len(ids) == len(set(ids))
    assert [d for d in ids if d.startswith(prefix)] == mine


@pytest.mark.parametrize("cursor", ["a", "__4"], ids=["truncated", "not-utf8"])
def test_a_cursor_not_made_by_the_api_is_a_400_problem(api: httpx.Client, cursor: str) -> None:
    assert_problem(api.get(DOCUMENTS, params={"cursor": cursor}), 400)
    assert_problem(api.get(COMMANDS, params={"cursor": cursor}), 400)


def test_a_cursor_hiding_a_nul_character_is_a_400_problem(own_client: httpx.Client) -> None:
    assert_problem(own_client.get(DOCUMENTS, params={"cursor": "AA"}), 400)  # base64 of "\x00"


def test_commands_page_newest_first_and_include_a_just_submitted_command(
    api: httpx.Client,
) -> None:
    submitted = api.post(DOCUMENTS, json={"title": "Listed", "text": "Listed."})
    assert submitted.status_code == 202, submitted.text
    command_id = submitted.json()["command_id"]

    first = api.get(COMMANDS, params={"limit": 3}).json()
    assert command_id in [c["command_id"] for c in first["items"]]

    pages = page_through(api, COMMANDS, 3)
    ids = [uuid.UUID(c["command_id"]) for page in pages for c in page]
    assert ids == sorted(ids, reverse=True)
    assert len(ids) == len(set(ids))
    assert ids.count(uuid.UUID(command_id)) == 1
    assert len(ids) >= 5


# -- degraded dependencies ---------------------------------------------------------------------


@pytest.fixture(params=["refusing", "silent"])
def unreachable_broker(request: pytest.FixtureRequest) -> Iterator[str]:
    """A bootstrap address that refuses connections, or accepts them and never answers."""
    if request.param == "refusing":
        yield f"127.0.0.1:{closed_port()}"
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # the kernel completes handshakes; nobody ever reads or replies
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_with_the_broker_unreachable_a_command_is_a_503_problem_within_10_seconds(
    start_ingress: IngressStarter, unreachable_broker: str, auth_headers: dict[str, str]
) -> None:
    # The ingress starts without a broker: it serves queries and refuses commands.
    ingress = start_ingress(UAIT_KAFKA_BOOTSTRAP=unreachable_broker, UAIT_PUBLISH_TIMEOUT_S="2")
    with httpx.Client(base_url=ingress.base_url, timeout=30, headers=auth_headers) as client:
        started = time.monotonic()
        response = client.post(DOCUMENTS, json={"title": "t", "text": "x"}, headers=WAIT)
        elapsed = time.monotonic() - started
        body = assert_problem(response, 503)
        assert int(response.headers["retry-after"]) > 0
        assert "command_id" not in body
        assert elapsed < 10, f"took {elapsed:.1f} s"
        # Queries do not need the broker.
        assert_problem(client.get(f"{DOCUMENTS}/{new_id('absent')}"), 404)


def test_reading_at_a_position_past_the_store_head_is_refused_at_once(
    start_ingress: IngressStarter, auth_headers: dict[str, str]
) -> None:
    ingress = start_ingress(UAIT_MAX_WAIT_S="5")
    far = 10**12
    with httpx.Client(base_url=ingress.base_url, timeout=30, headers=auth_headers) as client:
        reads: list[tuple[str, dict[str, Any]]] = [
            (SEARCH, {"q": "anything", "after": far}),
            (f"{DOCUMENTS}/{new_id()}", {"after": far}),
            (DOCUMENTS, {"after": far}),
        ]
        for path, params in reads:
            started = time.monotonic()
            response = client.get(path, params=params)
            elapsed = time.monotonic() - started
            body = assert_problem(response, 422)
            assert body["type"] == "urn:uait:problem:position-beyond-head"
            assert elapsed < 2, f"{path} took {elapsed:.2f} s"


def test_reading_at_a_position_the_read_model_has_not_reached_is_a_503_after_the_wait_cap(
    services: Any, start_ingress: IngressStarter, api: httpx.Client
) -> None:
    env = {**services.env}
    run = [sys.executable, "-m", "uait", "projections"]
    paused = subprocess.run([*run, "pause", "knowledge.documents"], env=env, capture_output=True)
    assert paused.returncode == 0, paused.stderr
    try:
        answer = api.post(
            DOCUMENTS,
            json={"title": "Behind", "text": "the documents projection is paused"},
            headers={"Prefer": "wait=20"},
        )
        assert answer.status_code == 201  # the outcome projection still runs
        position = answer.json()["position"]
        ingress = start_ingress(UAIT_MAX_WAIT_S="1")
        with httpx.Client(base_url=ingress.base_url, timeout=30, headers=api.headers) as client:
            started = time.monotonic()
            response = client.get(DOCUMENTS, params={"after": position})
            elapsed = time.monotonic() - started
        body = assert_problem(response, 503)
        assert body["type"] == "urn:uait:problem:read-model-behind"
        assert int(response.headers["retry-after"]) > 0
        assert 0.9 <= elapsed < 5
    finally:
        resumed = subprocess.run(
            [*run, "resume", "knowledge.documents"], env=env, capture_output=True
        )
        assert resumed.returncode == 0, resumed.stderr
    assert api.get(DOCUMENTS, params={"after": position}).status_code == 200


# -- documentation -----------------------------------------------------------------------------


def test_the_openapi_document_lists_the_knowledge_and_command_routes(api: httpx.Client) -> None:
    spec = api.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    expected = {
        DOCUMENTS: {"get", "post"},
        f"{DOCUMENTS}/{{document_id}}": {"get", "delete"},
        SEARCH: {"get"},
        COMMANDS: {"get"},
        f"{COMMANDS}/{{command_id}}": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, sorted(paths)
        assert methods <= set(paths[path]), (path, sorted(paths[path]))

    docs = api.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
