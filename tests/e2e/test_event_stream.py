"""The public event history and the SSE stream, resumed without gaps or repeats."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.e2e


def ingest(api: httpx.Client, doc: str, text: str) -> int:
    answer = api.post(
        "/v1/knowledge/documents",
        json={"document_id": doc, "title": "Streamed", "text": text},
        headers={"Prefer": "wait=20"},
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["position"])


def sse(lines: Iterator[str], count: int) -> list[dict[str, Any]]:
    """Read ``count`` events from an SSE line stream."""
    events: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line.startswith("id: "):
            current["id"] = line[4:]
        elif line.startswith("event: "):
            current["event"] = line[7:]
        elif line.startswith("data: "):
            current["data"] = orjson.loads(line[6:])
        elif line == "" and "data" in current:
            events.append(current)
            current = {}
            if len(events) == count:
                break
    return events


def test_the_stream_resumes_after_a_disconnect_with_no_gap_and_no_repeat(
    base_url: str, api, auth_headers
):
    prefix = f"sse-{uuid.uuid4().hex[:6]}"
    start = ingest(api, f"{prefix}-0", "first")
    with httpx.Client(base_url=base_url, timeout=30, headers=auth_headers) as client:
        # A public event of ours and nothing internal: outcomes are not served.
        params = {"from_position": start - 1, "type": "DocumentIngested"}
        with client.stream("GET", "/v1/events/stream", params=params) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            [first] = sse(lines, 1)
        assert first["event"] == "DocumentIngested"
        assert first["data"]["data"]["document_id"] == f"{prefix}-0"
        last_id = first["id"]

        # Disconnected: two more documents are ingested meanwhile.
        ingest(api, f"{prefix}-1", "second")
        ingest(api, f"{prefix}-2", "third")
        with client.stream(
            "GET",
            "/v1/events/stream",
            params={"type": "DocumentIngested"},
            headers={"Last-Event-ID": last_id},
        ) as response:
            lines = response.iter_lines()
            resumed = sse(lines, 2)
            # and it stays live: a document ingested now arrives on the open stream
            ingest(api, f"{prefix}-3", "fourth")
            [live] = sse(lines, 1)
    names = [e["data"]["data"]["document_id"] for e in [*resumed, live]]
    assert names == [f"{prefix}-1", f"{prefix}-2", f"{prefix}-3"]
    positions = [int(e["id"].split(":")[1]) for e in [first, *resumed, live]]
    assert positions == sorted(set(positions)), "a gap-free, repeat-free, ordered stream"


def test_the_event_history_pages_in_store_order_and_refuses_private_types(api):
    prefix = f"hist-{uuid.uuid4().hex[:6]}"
    start = ingest(api, f"{prefix}-a", "one")
    ingest(api, f"{prefix}-b", "two")
    page = api.get("/v1/events", params={"from_position": start - 1, "limit": 1}).json()
    assert len(page["items"]) == 1
    assert page["next_position"] == page["items"][0]["position"] + 1
    rest = api.get("/v1/events", params={"from_position": page["next_position"]}).json()
    ours = [
        e["data"]["document_id"]
        for e in [*page["items"], *rest["items"]]
        if e["data"].get("document_id", "").startswith(prefix)
    ]
    assert ours == [f"{prefix}-a", f"{prefix}-b"]
    assert all(e["type"] in ("DocumentIngested", "DocumentDeleted") for e in rest["items"])
    refused = api.get("/v1/events", params={"type": "CommandSucceeded"})
    assert refused.status_code == 422
    assert api.get("/v1/events", params={"context": "nope"}).status_code == 404
    bad = api.get("/v1/events/stream", headers={"Last-Event-ID": "other:1"})
    assert bad.status_code == 400


def test_the_websocket_stream_resumes_from_the_last_event_id(base_url: str, api, auth_headers):
    from websockets.sync.client import connect

    prefix = f"ws-{uuid.uuid4().hex[:6]}"
    start = ingest(api, f"{prefix}-0", "zero")
    url = base_url.replace("http://", "ws://") + "/v1/events/ws"
    with connect(
        f"{url}?from_position={start - 1}&type=DocumentIngested", additional_headers=auth_headers
    ) as ws:
        first = orjson.loads(ws.recv(timeout=10))
    assert first["data"]["document_id"] == f"{prefix}-0"
    ingest(api, f"{prefix}-1", "one")
    with connect(
        f"{url}?type=DocumentIngested&last_event_id={first['event_id']}",
        additional_headers=auth_headers,
    ) as ws:
        resumed = orjson.loads(ws.recv(timeout=10))
        ingest(api, f"{prefix}-2", "two")
        live = orjson.loads(ws.recv(timeout=10))
    assert [resumed["data"]["document_id"], live["data"]["document_id"]] == [
        f"{prefix}-1",
        f"{prefix}-2",
    ]
    assert first["position"] < resumed["position"] < live["position"]
