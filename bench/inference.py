"""``uait bench inference``: streamed chat completions called directly and through uait.

One synthetic OpenAI-compatible upstream (``bench.upstream``: a fixed time to the first token,
then a fixed pace) and one fresh embedded stack with the ingress, the worker and the
projections. The upstream is registered as the model ``synthetic`` (backend ``openai``); the
same requests then go, in alternating rounds so that noise hits both:

- **direct**: ``POST /v1/chat/completions`` on the upstream itself;
- **uait**: the same on the ingress with an API key: a ``RequestCompletion`` through Kafka, a
  run in the worker that streams from the upstream into Redis, and the ingress following it.

Each request is streamed with ``aiohttp`` (the cheaper client, so that this process takes less
of the machine from what it measures): time to first token (TTFT) is the time to the first
non-empty content delta, total the time to ``data: [DONE]``, tokens/s per stream the completion
tokens over (total - TTFT). Each round gives percentiles; the figures are medians across rounds.
With ``--real`` the tiny MLX model is measured too (concurrency 1), direct being the worker's
own ``MlxBackend`` called in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import httpx
import orjson
from rich.table import Table

from bench.ingress import CLI, _credentials, _free_port, _process, _wait_live, console
from bench.upstream import MODEL, Pace, serve_in_process
from contexts import REGISTRY
from infra.secrets import generate as generate_secrets
from infra.settings import Settings
from infra.stack import EmbeddedStack
from infra.startup import prepare

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable, Iterator

    from workers.inference.mlx_backend import MlxBackend

    Call = Callable[[], Awaitable["Sample"]]

PROCESS_ENV = {
    # Far above the bench's concurrency, so that uait's limits never queue a request.
    "UAIT_INFERENCE_ENDPOINT_CONCURRENCY": "64",
    "UAIT_RUN_CONCURRENCY": "64",
}
TARGETS = ("direct", "uait")
COLUMNS = ("target", "c", "TTFT p50", "TTFT p99", "total p50", "total p99", "tok/s stream",
           "tok/s all")  # fmt: skip
PROMPT = [{"role": "user", "content": "Tell me about event sourcing."}]


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    total_s: float
    tokens: int

    @property
    def stream_tps(self) -> float:
        return self.tokens / max(self.total_s - self.ttft_s, 1e-9)


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass(frozen=True)
class Figures:
    """One round's figures (or, from ``median``, each figure's median across rounds)."""

    ttft_p50_ms: float
    ttft_p99_ms: float
    total_p50_ms: float
    total_p99_ms: float
    stream_tps: float
    """Median of the streams' tokens/s."""
    aggregate_tps: float
    """Every stream's tokens over the round's wall time."""

    @classmethod
    def of(cls, samples: list[Sample], wall_s: float) -> Figures:
        ttft = [s.ttft_s * 1000 for s in samples]
        total = [s.total_s * 1000 for s in samples]
        return cls(
            percentile(ttft, 0.5),
            percentile(ttft, 0.99),
            percentile(total, 0.5),
            percentile(total, 0.99),
            statistics.median(s.stream_tps for s in samples),
            sum(s.tokens for s in samples) / wall_s,
        )

    @classmethod
    def median(cls, rounds: list[Figures]) -> Figures:
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{n: statistics.median(getattr(r, n) for r in rounds) for n in names})


Results = dict[tuple[str, int], Figures]
"""Figures by (target, concurrency)."""


def summary(results: Results, low: int, high: int) -> str:
    """The last line: TTFT overhead at concurrency ``low``, per-stream tokens/s ratio at
    ``high``."""
    direct, uait = results["direct", low], results["uait", low]
    p50, p99 = uait.ttft_p50_ms - direct.ttft_p50_ms, uait.ttft_p99_ms - direct.ttft_p99_ms
    ratio = results["uait", high].stream_tps / results["direct", high].stream_tps
    return (
        f"inference: overhead p50 {p50:.1f} ms p99 {p99:.1f} ms (concurrency {low});"
        f" tokens/s ratio {ratio:.2f} (concurrency {high})"
    )


def table(results: Results, title: str, caption: str) -> Table:
    """Latencies in ms, tokens/s, and uait - direct (ms) or uait / direct (tokens/s)."""
    out = Table(title=title, caption=caption)
    for name in COLUMNS:
        out.add_column(name)
    for c in sorted({c for _, c in results}):
        direct, uait = results["direct", c], results["uait", c]
        for name, f in (("direct", direct), ("uait", uait)):
            cells = [f"{v:.1f}" for v in _latencies(f)]
            out.add_row(name, str(c), *cells, f"{f.stream_tps:.0f}", f"{f.aggregate_tps:,.0f}")
        gaps = [
            f"[bold]{u - d:+.1f}" for u, d in zip(_latencies(uait), _latencies(direct), strict=True)
        ]
        pairs = ((uait.stream_tps, direct.stream_tps), (uait.aggregate_tps, direct.aggregate_tps))
        ratios = [f"[bold]x{u / d:.2f}" for u, d in pairs]
        out.add_row("[bold]overhead", str(c), *gaps, *ratios, end_section=True)
    return out


def _latencies(f: Figures) -> tuple[float, float, float, float]:
    return f.ttft_p50_ms, f.ttft_p99_ms, f.total_p50_ms, f.total_p99_ms


async def stream_chat(
    client: aiohttp.ClientSession, url: str, model: str, max_tokens: int, headers: dict[str, str]
) -> Sample:
    """One streamed chat completion. Its Server-Sent Events are decoded only up to the first
    content delta, then only the usage chunk: at 32 streams a full parse of every chunk would
    cost this process most of a core, taken from what it measures."""
    body = {
        "model": model,
        "messages": PROMPT,
        "stream": True,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    usage: dict[str, Any] | None = None
    buffer = b""
    async with client.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status} {(await response.read())[:300]!r}")
        async for chunk in response.content.iter_any():
            *events, buffer = (buffer + chunk).split(b"\n\n")
            for raw in events:
                if first is not None and b'"usage"' not in raw and b'"error"' not in raw:
                    continue
                if not raw.startswith(b"data: {"):
                    continue
                event = orjson.loads(raw[6:])
                if "error" in event:
                    raise RuntimeError(f"{url}: error event {event['error']}")
                usage = event.get("usage") or usage
                if first is None and any(
                    c.get("delta", {}).get("content") for c in event.get("choices") or ()
                ):
                    first = time.perf_counter()
    if first is None or usage is None:
        raise RuntimeError(f"{url}: no content or no usage streamed")
    return Sample(first - started, time.perf_counter() - started, int(usage["completion_tokens"]))


async def _round(call: Call, n: int, concurrency: int) -> Figures:
    """``n`` requests, ``concurrency`` at a time (each lane sends its next when one ends)."""
    remaining = iter(range(n))
    samples: list[Sample] = []

    async def lane() -> None:
        for _ in remaining:
            samples.append(await call())

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return Figures.of(samples, time.perf_counter() - started)


async def measure(targets: dict[str, Call], plan: Plan, requests: int) -> Results:
    """Alternating rounds (the order of the targets flips every round), after a warm-up."""
    top = max(plan.concurrency)
    for call in targets.values():
        await _round(call, 2, 1)
        await _round(call, top, top)
    runs: dict[tuple[str, int], list[Figures]] = defaultdict(list)
    for r in range(plan.rounds):
        for c in plan.concurrency:
            for name in TARGETS if r % 2 == 0 else TARGETS[::-1]:
                f = await _round(targets[name], requests if c == 1 else c * plan.waves, c)
                runs[name, c].append(f)
                console.print(
                    f"round {r + 1}: {name:6} c={c:<2} TTFT p50/p99 {f.ttft_p50_ms:.1f}/"
                    f"{f.ttft_p99_ms:.1f} ms, total {f.total_p50_ms:.0f}/{f.total_p99_ms:.0f} ms,"
                    f" {f.stream_tps:.0f} tok/s stream, {f.aggregate_tps:,.0f} all"
                )
    return {key: Figures.median(values) for key, values in runs.items()}


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"uait {' '.join(args)}: {done.stdout}{done.stderr}")
    return done.stdout


def _inference_key(base: str, token: str, models: set[str]) -> dict[str, str]:
    """An API key that may run completions, once the ingress sees every model in ``models``."""
    with httpx.Client(base_url=base, timeout=30) as client:
        created = client.post(
            "/v1/api-keys",
            json={"name": "bench-inference", "scopes": ["inference:use", "models:read"]},
            headers={"Authorization": f"Bearer {token}", "Prefer": "wait=30"},
        )
        headers = {"Authorization": f"Bearer {created.json()['api_key']}"}
        deadline = time.monotonic() + 60
        while True:
            answer = client.get("/v1/models", headers=headers)
            if answer.status_code == 200 and models <= {m["id"] for m in answer.json()["data"]}:
                return headers
            if time.monotonic() > deadline:
                raise RuntimeError(f"models never listed: {answer.status_code} {answer.text}")
            time.sleep(0.2)


@dataclass(frozen=True)
class Plan:
    """What the bench sends: its options."""

    rounds: int = 3
    requests: int = 30
    """Requests per round at concurrency 1."""
    waves: int = 4
    """Requests per concurrent stream per round, above concurrency 1."""
    concurrency: tuple[int, ...] = (1, 32)
    max_tokens: int = 64
    pace: Pace = field(default_factory=Pace)
    real: bool = True
    real_requests: int = 10
    env: dict[str, str] = field(default_factory=dict)
    """Settings of the uait processes, over ``PROCESS_ENV``."""

    @property
    def process_env(self) -> dict[str, str]:
        return {**PROCESS_ENV, **self.env}


@dataclass(frozen=True)
class Running:
    base: str
    upstream: str
    headers: dict[str, str]
    """The API key's."""
    tiny: Path | None
    """The tiny model's folder (``--real``)."""


@contextlib.contextmanager
def running(plan: Plan, data: Path) -> Iterator[Running]:
    """The upstream, a fresh embedded stack, the uait processes, an API key, the models."""
    stack = EmbeddedStack(
        Settings(kafka_bootstrap="", database_url="", redis_url=""), data_dir=data / "stack"
    )
    with serve_in_process(plan.pace, _free_port()) as upstream, stack as ep:
        policies = {
            "inference": {"limit": 10**6, "period_s": 1},
            "default": {"limit": 10**6, "period_s": 1},
            "login": {"limit": 1000, "period_s": 60},
        }
        env = {
            **os.environ,
            **generate_secrets(),
            "UAIT_KAFKA_BOOTSTRAP": ep.kafka_bootstrap,
            "UAIT_DATABASE_URL": ep.database_url,
            "UAIT_REDIS_URL": ep.redis_url,
            "UAIT_DATA_DIR": str(data),
            "UAIT_MODEL_DIR": str(data / "models"),
            "UAIT_LOG_LEVEL": "WARNING",
            "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000",
            # Every request is still checked and counted; the limits just never bite.
            "UAIT_RATE_LIMIT_POLICIES": json.dumps(policies),
            **plan.process_env,
        }
        settings = Settings(kafka_bootstrap=ep.kafka_bootstrap, database_url=ep.database_url)
        prepare(settings, REGISTRY.topic_specs(settings))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        log = data / "processes.log"
        with (
            _process([*CLI, "ingress", "--port", str(port)], env, log),
            _process([*CLI, "worker"], env, log),
            _process([*CLI, "projections", "run"], env, log),
        ):
            try:
                _wait_live(base)
                token, _ = _credentials(base, env)
                register = ["models", "register", "synthetic", "--backend", "openai"]
                _cli(env, *register, "--source", MODEL, "--endpoint", upstream)
                tiny = None
                if plan.real:
                    built = _cli(env, "models", "build-tiny", "--register", "tiny")
                    tiny = Path(built.splitlines()[0])
                models = {"synthetic", "tiny"} if plan.real else {"synthetic"}
                headers = _inference_key(base, token, models)
                yield Running(base, upstream, headers, tiny)
            except Exception:
                console.print(log.read_text()[-3000:])
                raise


async def run_all(live: Running, plan: Plan) -> tuple[Results, Results | None]:
    """The synthetic upstream's figures, then (``--real``) the tiny model's."""
    url = f"{live.base}/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as direct,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as through,
    ):

        def via_uait(model: str) -> Call:
            return lambda: stream_chat(through, url, model, plan.max_tokens, live.headers)

        upstream = f"{live.upstream}/v1/chat/completions"
        synthetic: dict[str, Call] = {
            "direct": lambda: stream_chat(direct, upstream, MODEL, plan.max_tokens, {}),
            "uait": via_uait("synthetic"),
        }
        console.print("[bold]synthetic upstream[/bold]")
        results = await measure(synthetic, plan, plan.requests)
        if live.tiny is None:
            return results, None
        from workers.inference.mlx_backend import MlxBackend

        backend = MlxBackend(max_models=1)
        real = {"direct": in_process(backend, live.tiny, plan.max_tokens), "uait": via_uait("tiny")}
        console.print("[bold]tiny MLX model[/bold]")
        try:
            one = dataclasses.replace(plan, concurrency=(1,))
            return results, await measure(real, one, plan.real_requests)
        finally:
            backend.close()


def in_process(backend: MlxBackend, folder: Path, max_tokens: int) -> Call:
    """Generations of the worker's own MLX backend, called here."""
    from workers.inference.backend import Delta, Generation

    generation = Generation("tiny", str(folder), messages=PROMPT, max_tokens=max_tokens)

    async def call() -> Sample:
        started, first, tokens = time.perf_counter(), None, 0
        async for item in backend.generate(generation, cancelled=lambda: False):
            if isinstance(item, Delta) and item.text:
                first, tokens = first or time.perf_counter(), tokens + item.tokens
        if first is None:
            raise RuntimeError("the tiny model streamed nothing")
        return Sample(first - started, time.perf_counter() - started, tokens)

    return call


def main(plan: Plan) -> None:
    levels = sorted(set(plan.concurrency))
    plan = dataclasses.replace(plan, concurrency=tuple(levels))
    setting = " ".join(f"{k}={v}" for k, v in plan.process_env.items())
    console.print(
        f"upstream: first token after {plan.pace.first_token_s * 1000:g} ms, then"
        f" {plan.pace.tokens_per_s:g} tokens/s per request; {plan.max_tokens} tokens per"
        f" completion; uait processes with {setting}"
    )
    with (
        tempfile.TemporaryDirectory(prefix="uait-bench-inference-") as tmp,
        running(plan, Path(tmp)) as live,
    ):
        results, real = asyncio.run(run_all(live, plan))
    caption = (
        f"ms; medians of {plan.rounds} rounds; overhead = uait - direct, x = uait / direct;"
        " tok/s stream = median of completion tokens / (total - TTFT), tok/s all = all tokens"
        " / wall time. The summary's overhead is TTFT's (what uait adds before a stream"
        " starts; total's should match it), its ratio that of tok/s stream."
    )
    console.print(table(results, "synthetic upstream: direct vs through uait", caption))
    if real is not None:
        title = "tiny MLX model: the worker's backend in this process vs through uait"
        console.print(table(real, title, f"ms; medians of {plan.rounds} rounds"))
    print(summary(results, levels[0], levels[-1]))
