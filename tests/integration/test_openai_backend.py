"""The OpenAI-compatible backend against a real ``mlx_lm.server`` on the tiny model, with its
endpoint's circuit breaker in the session's real Redis; plus a few answers no real server gives on
demand (a 503, an error event), from a small scripted HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from infra.breakers import Breaker, BreakerConfig, BreakerRegistry, BreakerState
from infra.settings import Settings
from tests.e2e.fixtures import free_port
from tests.inference_servers import MlxServer
from workers.inference.backend import BackendError, BadRequestError, Delta, Finish, Generation
from workers.inference.openai_backend import (
    CircuitOpenError,
    OpenAICompatibleBackend,
    breaker_name,
    endpoint_backend,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlxServer]:
    mlx = MlxServer(tiny_model_dir, tmp_path_factory.mktemp("mlx-server"))
    mlx.start()
    try:
        yield mlx
    finally:
        mlx.stop()


@pytest.fixture
async def backend(server: MlxServer) -> AsyncIterator[OpenAICompatibleBackend]:
    async with OpenAICompatibleBackend(f"{server.url}/v1", breaker=None) as client:
        yield client


@pytest.fixture
async def redis(endpoints: Endpoints) -> AsyncIterator[Redis]:
    client = Redis.from_url(endpoints.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def ask(server: MlxServer, **fields: Any) -> Generation:
    return Generation(model="tiny", source=str(server.model_dir.resolve()), **fields)


async def run(
    backend: OpenAICompatibleBackend,
    request: Generation,
    cancelled: Callable[[], bool] = lambda: False,
) -> tuple[list[str], Finish]:
    deltas: list[str] = []
    finishes: list[Finish] = []
    async for item in backend.generate(request, cancelled=cancelled):
        assert not finishes, "nothing may follow the Finish"
        if isinstance(item, Delta):
            deltas.append(item.text)
        else:
            finishes.append(item)
    assert len(finishes) == 1
    return deltas, finishes[0]


def unstreamed(server: MlxServer, path: str, **body: Any) -> dict[str, Any]:
    answer = httpx.post(f"{server.url}/v1/{path}", json=body, timeout=30)
    answer.raise_for_status()
    result: dict[str, Any] = answer.json()
    return result


async def test_a_chat_streams_the_text_a_non_streamed_call_returns(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    deltas, finish = await run(backend, ask(server, messages=HI, max_tokens=12))
    plain = unstreamed(server, "chat/completions", messages=HI, max_tokens=12, temperature=0)
    assert "".join(deltas) == plain["choices"][0]["message"]["content"]
    assert len(deltas) > 1
    assert finish.reason == "length"
    assert (finish.prompt_tokens, finish.completion_tokens) == (4, 12)
    assert finish.endpoint == server.url


async def test_a_prompt_goes_to_completions_and_max_tokens_ends_it_with_length(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    deltas, finish = await run(backend, ask(server, prompt="Numbers 0 1 2", max_tokens=5))
    plain = unstreamed(server, "completions", prompt="Numbers 0 1 2", max_tokens=5, temperature=0)
    assert "".join(deltas) == plain["choices"][0]["text"]
    assert (finish.reason, finish.completion_tokens) == ("length", 5)


async def test_a_stop_sequence_ends_the_answer_with_stop(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    deltas, full = await run(backend, ask(server, messages=HI, max_tokens=12))
    assert "".join(deltas).startswith("reco reco")
    deltas, finish = await run(backend, ask(server, messages=HI, max_tokens=12, stop=(" reco",)))
    assert " reco" not in "".join(deltas)
    assert finish.reason == "stop"
    assert finish.completion_tokens < full.completion_tokens


async def test_the_same_seed_samples_the_same_text(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    request = ask(server, prompt="hi", max_tokens=12, temperature=1.0, seed=3)
    first, _ = await run(backend, request)
    again, _ = await run(backend, request)
    assert first == again


async def test_cancelling_after_a_few_chunks_ends_it_with_the_partial_count(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    seen: list[str] = []

    def cancelled() -> bool:
        return len(seen) >= 3

    finish = None
    started = time.monotonic()
    request = ask(server, messages=HI, max_tokens=2000)
    async for item in backend.generate(request, cancelled=cancelled):
        if isinstance(item, Delta):
            seen.append(item.text)
        else:
            finish = item
    assert len(seen) == 3
    assert finish is not None
    assert (finish.reason, finish.completion_tokens) == ("cancelled", 3)
    assert time.monotonic() - started < 2.0  # 2,000 tokens take ~3 s here
    deltas, _ = await run(backend, ask(server, messages=HI, max_tokens=4))
    assert len(deltas) == 4  # the server took the closed stream in its stride


async def test_a_resumed_completion_continues_after_its_prefix(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    full, _ = await run(backend, ask(server, prompt="Numbers 0 1 2", max_tokens=16))
    assert full[-1] != full[0]  # the tail differs from the start: a restart would show
    prefix = "".join(full[:4])
    resumed = ask(server, prompt="Numbers 0 1 2", max_tokens=16, prefix=prefix, prefix_tokens=4)
    deltas, finish = await run(backend, resumed)
    assert "".join(deltas) == "".join(full[4:])
    assert (finish.reason, finish.completion_tokens) == ("length", 16)


async def test_a_resumed_chat_sends_the_prefix_as_the_assistants_unfinished_turn(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    _, fresh = await run(backend, ask(server, messages=HI, max_tokens=12))
    resumed = ask(server, messages=HI, max_tokens=12, prefix="reco reco", prefix_tokens=2)
    path, body = backend.request_body(resumed)
    assert path == "/chat/completions"
    assert body["messages"][-1] == {"role": "assistant", "content": "reco reco"}
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert body["max_tokens"] == 10
    deltas, finish = await run(backend, resumed)
    assert deltas
    assert not "".join(deltas).startswith("reco reco")
    assert finish.prompt_tokens > fresh.prompt_tokens  # the server saw the prefix
    assert finish.completion_tokens == 12


async def test_models_are_listed_and_the_probe_answers(
    server: MlxServer, backend: OpenAICompatibleBackend
) -> None:
    assert await backend.list_models() == [str(server.model_dir.resolve())]
    assert await backend.probe()
    async with OpenAICompatibleBackend(f"http://127.0.0.1:{free_port()}", breaker=None) as nobody:
        assert not await nobody.probe()


async def test_a_4xx_is_a_bad_request_that_does_not_count_against_the_breaker(
    server: MlxServer, redis: Redis
) -> None:
    registry = BreakerRegistry(redis)
    config = BreakerConfig(min_calls=1)
    async with await OpenAICompatibleBackend.create(
        server.url, registry, breaker_config=config
    ) as backend:
        assert backend.breaker is not None
        assert backend.breaker.name == f"openai:127.0.0.1:{server.port}"
        await backend.breaker.reset()
        with pytest.raises(BadRequestError, match="top_p must be at most 1"):
            await run(backend, ask(server, messages=HI, top_p=1.5))
        with pytest.raises(BadRequestError, match="HTTP 404"):
            await run(backend, Generation(model="tiny", source="no-such-model", prompt="hi"))
        status = await backend.breaker.status()
        assert (status.state, status.calls, status.failures) == (BreakerState.CLOSED, 2, 0)


async def kill_after_three_chunks(
    server: MlxServer, backend: OpenAICompatibleBackend, request: Generation
) -> None:
    streamed = 0
    async for item in backend.generate(request, cancelled=lambda: False):
        assert isinstance(item, Delta)
        streamed += 1
        if streamed == 3:
            server.kill()


async def test_the_workers_factory_guards_an_endpoint_with_the_settings_breaker(
    server: MlxServer, endpoints: Endpoints
) -> None:
    settings = Settings(redis_url=endpoints.redis_url, breaker_min_calls=7)
    async with endpoint_backend(settings, server.url, "llamacpp") as backend:
        assert backend.breaker is not None
        assert backend.breaker.name == breaker_name(server.url)
        assert backend.breaker.config.min_calls == 7
        assert backend.dialect == "llamacpp"
        await backend.breaker.reset()
        deltas, _ = await run(backend, ask(server, messages=HI, max_tokens=3))
        assert len(deltas) == 3
        assert (await backend.breaker.status()).calls == 1
    async with endpoint_backend(Settings(redis_url=""), server.url) as unguarded:
        assert unguarded.breaker is None


def breaker_config() -> BreakerConfig:
    return BreakerConfig(
        window_size=5, min_calls=3, failure_rate=60.0, open_wait_s=1.0, half_open_probes=1
    )


async def test_the_breaker_opens_when_the_server_dies_and_closes_once_it_is_back(
    server: MlxServer, redis: Redis
) -> None:
    breaker = Breaker(f"test.openai.{uuid.uuid4().hex[:12]}", redis, breaker_config())
    backend = OpenAICompatibleBackend(
        server.url, breaker=breaker, retries=1, backoff_s=0.05, connect_timeout_s=1.0
    )
    async with backend:
        long = ask(server, messages=HI, max_tokens=5000)
        # Chunks already in the socket still arrive after the kill; then the stream breaks.
        with pytest.raises(BackendError, match=r"broke after \d+ chunks"):  # not retried
            await kill_after_three_chunks(server, backend, long)
        assert (await breaker.status()).calls == 1  # counted when its first token came

        with pytest.raises(BackendError) as refused:  # two attempts, two failures: it opens
            await run(backend, ask(server, messages=HI))
        assert not isinstance(refused.value, CircuitOpenError)
        status = await breaker.status()
        assert status.state is BreakerState.OPEN

        with socket.create_server(("127.0.0.1", server.port)) as listener:
            listener.setblocking(False)
            started = time.monotonic()
            with pytest.raises(CircuitOpenError) as fast:
                await run(backend, ask(server, messages=HI))
            assert time.monotonic() - started < 0.2
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody tried to connect
        assert fast.value.retry_at is not None

        server.start()
        assert status.half_open_at is not None
        await asyncio.sleep(max(0.0, status.half_open_at.timestamp() - time.time()))
        deltas, finish = await run(backend, ask(server, messages=HI, max_tokens=4))
        assert (len(deltas), finish.reason) == (4, "length")  # the half-open probe
        assert (await breaker.status()).state is BreakerState.CLOSED


# --- answers from a scripted server ------------------------------------------------------------

Answer = tuple[int, bytes]
"""A status and a body (JSON for an error, SSE otherwise)."""


def sse(*events: dict[str, Any] | str) -> bytes:
    """An SSE body: dicts as JSON data, ``": ..."`` as a comment, other strings as data."""
    lines = []
    for event in events:
        if isinstance(event, dict):
            event = f"data: {orjson.dumps(event).decode()}"
        elif not event.startswith(":"):
            event = f"data: {event}"
        lines.append(f"{event}\n\n")
    return "".join(lines).encode()


def chunk(text: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def error(status: int, body: Any) -> Answer:
    return status, orjson.dumps(body)


@contextlib.asynccontextmanager
async def scripted(
    *answers: Answer, repeat: bool = False
) -> AsyncIterator[OpenAICompatibleBackend]:
    """A backend on a real HTTP server that gives ``answers`` in turn (the last one forever with
    ``repeat``), whatever the request."""
    queue = list(answers)

    async def answer(request: web.Request) -> web.Response:
        status, body = queue[0] if repeat and len(queue) == 1 else queue.pop(0)
        kind = "application/json" if status >= 300 else "text/event-stream"
        return web.Response(status=status, body=body, content_type=kind)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with OpenAICompatibleBackend(
            f"http://127.0.0.1:{port}", breaker=None, backoff_s=0.01
        ) as backend:
            yield backend
    finally:
        await runner.cleanup()


async def test_a_503_before_the_first_token_is_retried() -> None:
    overloaded = error(503, {"error": {"message": "overloaded"}})
    answer = (200, sse(": ping", chunk("a"), chunk("b", "stop"), "[DONE]"))
    async with scripted(overloaded, answer) as backend:
        deltas, finish = await run(backend, Generation(model="m", source="up", messages=HI))
    assert deltas == ["a", "b"]
    assert (finish.reason, finish.completion_tokens, finish.details["attempts"]) == ("stop", 2, 2)


async def test_every_attempt_failing_is_a_backend_error_with_the_last_cause() -> None:
    async with scripted(error(429, {"error": "slow down"}), repeat=True) as backend:
        with pytest.raises(BackendError, match=r"3 attempts.*slow down"):
            await run(backend, Generation(model="m", source="up", prompt="x"))


async def test_an_error_event_after_the_first_token_is_a_backend_error() -> None:
    body = sse(chunk("a"), {"error": {"message": "engine died"}})
    async with scripted((200, body)) as backend:
        with pytest.raises(BackendError, match="engine died"):
            await run(backend, Generation(model="m", source="up", messages=HI))


async def test_an_unknown_finish_reason_is_a_stop_and_server_usage_is_the_count() -> None:
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}}
    body = sse(chunk("a"), chunk(None, "tool_calls"), usage, "[DONE]")
    async with scripted((200, body)) as backend:
        _, finish = await run(backend, Generation(model="m", source="up", messages=HI))
    assert (finish.reason, finish.prompt_tokens, finish.completion_tokens) == ("stop", 7, 9)
    assert finish.details["upstream_finish_reason"] == "tool_calls"


async def test_the_llamacpp_dialect_sends_a_json_object_with_the_schema() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    request = Generation(model="m", source="up", prompt="x", response_format=fmt, seed=1)
    async with OpenAICompatibleBackend("http://h:1", breaker=None) as openai:
        assert openai.request_body(request)[1]["response_format"] == fmt
    async with OpenAICompatibleBackend("http://h:1", breaker=None, dialect="llamacpp") as llamacpp:
        path, body = llamacpp.request_body(request)
    assert path == "/completions"
    assert body["response_format"] == {"type": "json_object", "schema": schema}
    assert body["stream_options"] == {"include_usage": True}
    assert breaker_name("https://API.example.com/v1") == "openai:api.example.com:443"
