"""The inference bench's synthetic upstream and its figures, without a stack."""

from __future__ import annotations

import socket
import time

import aiohttp
import httpx
import orjson

from bench.inference import Figures, Sample, stream_chat, summary
from bench.upstream import MODEL, Pace, SyntheticUpstream, serve_in_thread

FAST = Pace(tokens_per_s=20_000, first_token_s=0.0, default_tokens=8)


def _client(app: SyntheticUpstream) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://upstream")


def _events(body: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in body.split(b"\n\n") if e]


async def test_the_upstream_streams_exactly_max_tokens_then_usage_then_done():
    app = SyntheticUpstream(FAST)
    async with _client(app) as client:
        answer = await client.post(
            "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "two words"}],
                  "stream": True, "max_tokens": 5, "stream_options": {"include_usage": True}},
        )  # fmt: skip
    assert answer.headers["content-type"] == "text/event-stream"
    *chunks, done = _events(answer.content)
    assert done == b"[DONE]"
    parsed = [orjson.loads(c) for c in chunks]
    contents = [
        c["choices"][0]["delta"]["content"]
        for c in parsed
        if c["choices"] and c["choices"][0]["delta"]
    ]
    assert contents == ["", " t0", " t1", " t2", " t3", " t4"]  # the role chunk, then 5 tokens
    assert parsed[-2]["choices"][0]["finish_reason"] == "length"
    assert parsed[-1]["choices"] == []
    assert parsed[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert app.stats.finished == 1


async def test_without_include_usage_no_usage_chunk_is_sent_and_the_default_length_applies():
    async with _client(SyntheticUpstream(FAST)) as client:
        answer = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
        )
    chunks = [orjson.loads(c) for c in _events(answer.content)[:-1]]
    assert all("usage" not in c for c in chunks)
    assert len(chunks) == 1 + FAST.default_tokens + 1  # role, tokens, finish
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_a_plain_completion_is_one_object_with_every_token_and_the_usage():
    async with _client(SyntheticUpstream(FAST)) as client:
        models = (await client.get("/v1/models")).json()
        answer = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
    assert [m["id"] for m in models["data"]] == [MODEL]
    body = answer.json()
    assert body["choices"][0]["message"]["content"] == " t0 t1 t2"
    assert body["usage"]["completion_tokens"] == 3


async def test_the_bench_client_reads_ttft_total_and_tokens_from_the_stream():
    slow_first = Pace(tokens_per_s=20_000, first_token_s=0.05, default_tokens=8)
    port = _free_port()
    with serve_in_thread(slow_first, port):
        async with aiohttp.ClientSession() as client:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            sample = await stream_chat(client, url, MODEL, 12, {})
    assert sample.tokens == 12
    assert 0.05 <= sample.ttft_s <= sample.total_s


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_client_that_goes_away_stops_its_stream():
    port = _free_port()
    with serve_in_thread(Pace(tokens_per_s=500, first_token_s=0.0), port) as app:
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 5000}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        with httpx.stream("POST", url, json=body, timeout=5) as answer:
            lines = answer.iter_lines()
            next(lines), next(lines), next(lines)
        deadline = time.monotonic() + 3
        while app.stats.disconnected == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert app.stats.disconnected == 1
    assert app.stats.finished == 0


def _figures(ttft_p50: float, ttft_p99: float, stream_tps: float) -> Figures:
    return Figures(ttft_p50, ttft_p99, ttft_p50 + 300, ttft_p99 + 300, stream_tps, 1000.0)


def test_the_summary_line_has_the_exact_format():
    results = {
        ("direct", 1): _figures(22.04, 23.5, 200.0),
        ("uait", 1): _figures(34.36, 41.0, 199.0),
        ("direct", 32): _figures(30.0, 60.0, 200.0),
        ("uait", 32): _figures(50.0, 90.0, 192.0),
    }
    assert summary(results, 1, 32) == (
        "inference: overhead p50 12.3 ms p99 17.5 ms (concurrency 1);"
        " tokens/s ratio 0.96 (concurrency 32)"
    )


def test_figures_are_percentiles_of_a_round_and_medians_across_rounds():
    samples = [Sample(ttft_s=i / 1000, total_s=0.1 + i / 1000, tokens=10) for i in range(1, 101)]
    one = Figures.of(samples, wall_s=2.0)
    assert (one.ttft_p50_ms, one.ttft_p99_ms) == (51.0, 100.0)
    assert one.stream_tps == 100.0  # 10 tokens in the 0.1 s after each first token
    assert one.aggregate_tps == 500.0
    rounds = [one, Figures.of(samples[:1], 1.0), Figures.of(samples[-1:], 1.0)]
    assert Figures.median(rounds).ttft_p50_ms == 51.0
