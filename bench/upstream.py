"""A synthetic OpenAI-compatible server: a known number of tokens at a fixed pace, nothing else.

``GET /v1/models`` lists its model; ``POST /v1/chat/completions`` answers ``max_tokens`` tokens
(``Pace.default_tokens`` without it), the first after ``Pace.first_token_s`` and the rest at
``Pace.tokens_per_s`` per request, streamed as OpenAI's SSE chunks with ``stream: true`` (the
usage in a last chunk with ``stream_options.include_usage``) or as one JSON object. Token ``i``
is the text ``" t<i>"``. A streamed answer stops when its client goes away. ``GET /stats``
counts requests, finished streams and disconnected ones.

It is a plain ASGI app on uvicorn: each token costs a timer and one write, so what a client
sees beyond the pace is its own cost (``uait bench inference``), and tests get a real upstream
without a model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import uvicorn

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.types import Receive, Scope, Send

MODEL = "synthetic-1"


@dataclass(frozen=True)
class Pace:
    tokens_per_s: float = 200.0
    """Tokens per second of each request, after its first."""
    first_token_s: float = 0.020
    """From the request to its first token."""
    default_tokens: int = 64
    """Tokens of a request without ``max_tokens``."""


@dataclass
class UpstreamStats:
    requests: int = 0
    finished: int = 0
    disconnected: int = 0


class SyntheticUpstream:
    """The ASGI app."""

    def __init__(self, pace: Pace, model: str = MODEL) -> None:
        self.pace = pace
        self.model = model
        self.stats = UpstreamStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route = (scope["method"], scope["path"])
        if route == ("GET", "/v1/models"):
            listed = {"id": self.model, "object": "model", "created": 0, "owned_by": "bench"}
            await _json(send, 200, {"object": "list", "data": [listed]})
        elif route == ("GET", "/stats"):
            await _json(send, 200, asdict(self.stats))
        elif route == ("POST", "/v1/chat/completions"):
            await self._complete(receive, send)
        else:
            await _json(send, 404, {"error": {"message": f"no route {scope['path']}"}})

    async def _complete(self, receive: Receive, send: Send) -> None:
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            body = orjson.loads(raw)
            messages = body["messages"]
            prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            await _json(send, 400, {"error": {"message": "a JSON body with messages, please"}})
            return
        self.stats.requests += 1
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        n = int(asked) if asked else self.pace.default_tokens
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        answer = _Answer(body.get("model") or self.model, n, prompt_tokens, bool(asked), usage)
        start = time.monotonic()
        if not body.get("stream"):
            await asyncio.sleep(self._due(start, n - 1) - time.monotonic())
            await _json(send, 200, answer.whole())
            self.stats.finished += 1
            return
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            await self._stream(send, answer, start, gone)
        except OSError:  # the server could not write: the client is gone
            gone.set()
        finally:
            watcher.cancel()
        if gone.is_set():
            self.stats.disconnected += 1
        else:
            self.stats.finished += 1

    def _due(self, start: float, i: int) -> float:
        return start + self.pace.first_token_s + i / self.pace.tokens_per_s

    async def _stream(self, send: Send, answer: _Answer, start: float, gone: asyncio.Event) -> None:
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await _event(send, answer.chunk({"role": "assistant", "content": ""}))
        for i in range(answer.tokens):
            delay = self._due(start, i) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if gone.is_set():
                return
            await _event(send, answer.chunk({"content": f" t{i}"}))
        await _event(send, answer.chunk({}, answer.finish_reason))
        if answer.include_usage:
            await _event(send, answer.chunk(None) | {"usage": answer.usage})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


@dataclass
class _Answer:
    model: str
    tokens: int
    prompt_tokens: int
    length_bound: bool
    include_usage: bool
    id: str = "chatcmpl-synthetic"

    @property
    def finish_reason(self) -> str:
        return "length" if self.length_bound else "stop"

    @property
    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.tokens,
                "total_tokens": total}  # fmt: skip

    def chunk(self, delta: dict[str, Any] | None, finish: str | None = None) -> dict[str, Any]:
        """A ``chat.completion.chunk``; ``delta=None``: the usage chunk (no choices)."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return {"id": self.id, "object": "chat.completion.chunk", "created": 0,
                "model": self.model, "choices": choices}  # fmt: skip

    def whole(self) -> dict[str, Any]:
        text = "".join(f" t{i}" for i in range(self.tokens))
        choice = {"index": 0, "message": {"role": "assistant", "content": text},
                  "finish_reason": self.finish_reason}  # fmt: skip
        return {"id": self.id, "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [choice], "usage": self.usage}  # fmt: skip


async def _watch_disconnect(receive: Receive, gone: asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


async def _event(send: Send, data: dict[str, Any]) -> None:
    body = b"data: " + orjson.dumps(data) + b"\n\n"
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _json(send: Send, status: int, data: dict[str, Any]) -> None:
    headers = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": orjson.dumps(data)})


def _config(app: SyntheticUpstream, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


def _wait_up(base: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/v1/models", timeout=1).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"the synthetic upstream at {base} did not start")


@contextlib.contextmanager
def serve_in_thread(pace: Pace, port: int) -> Iterator[SyntheticUpstream]:
    """The app on ``127.0.0.1:port`` in a thread of this process (its ``stats`` readable)."""
    app = SyntheticUpstream(pace)
    server = uvicorn.Server(_config(app, port))
    thread = threading.Thread(target=server.run, daemon=True, name="synthetic-upstream")
    thread.start()
    try:
        _wait_up(f"http://127.0.0.1:{port}")
        yield app
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def serve_in_process(pace: Pace, port: int) -> Iterator[str]:
    """The app on ``127.0.0.1:port`` in a process of its own (no GIL shared); its base URL."""
    argv = [sys.executable, "-m", "bench.upstream", "--port", str(port),
            "--tokens-per-s", str(pace.tokens_per_s),
            "--first-token-ms", str(pace.first_token_s * 1000),
            "--default-tokens", str(pace.default_tokens)]  # fmt: skip
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_up(base)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--tokens-per-s", type=float, default=Pace.tokens_per_s)
    parser.add_argument("--first-token-ms", type=float, default=Pace.first_token_s * 1000)
    parser.add_argument("--default-tokens", type=int, default=Pace.default_tokens)
    args = parser.parse_args()
    pace = Pace(args.tokens_per_s, args.first_token_ms / 1000, args.default_tokens)
    uvicorn.Server(_config(SyntheticUpstream(pace), args.port)).run()


if __name__ == "__main__":
    main()
