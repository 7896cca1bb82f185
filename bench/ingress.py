"""``uait bench ingress``: the full publish path against a bare endpoint of the same server.

One ingress process on a fresh embedded stack. ``wrk`` drives, in alternating rounds:

- ``POST /v1/knowledge/documents`` with a bearer access token (and, separately, an API key):
  authentication, the deny-list check, rate limiting (one GCRA call in Redis), idempotency and
  body guards, pydantic validation, the actor token, and a Kafka publish acknowledged with
  ``acks=all``. Only ``202`` answers count: the ingress answers 202 after the broker acked.
- ``GET /bench/bare``: a FastAPI endpoint returning a constant, served by the same process and
  middleware stack (``UAIT_BENCH_BARE_ROUTE=true`` adds it).

The worker and the projections run only to create the admin and its API key, then stop, so the
measured rounds share the two cores with nothing but the broker, PostgreSQL and Redis.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console
from rich.table import Table

from contexts import REGISTRY
from infra.secrets import generate as generate_secrets
from infra.settings import Settings
from infra.stack import EmbeddedStack
from infra.startup import prepare

if TYPE_CHECKING:
    from collections.abc import Iterator

console = Console()
CLI = [sys.executable, "-m", "uait"]

# Counts answers by status per wrk thread; done() prints the 202s and the others.
WRK_SCRIPT = """
local counter = 0
local threads = {}
function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  accepted = 0
  other = 0
  method = args[1] or "GET"
  auth_name = args[2]
  auth_value = args[3]
end
function request()
  counter = counter + 1
  local headers = {}
  if auth_name then headers[auth_name] = auth_value end
  if method == "POST" then
    headers["Content-Type"] = "application/json"
    local body = string.format(
      '{"document_id": "bench-%d-%d", "title": "Bench", "text": "A small document."}',
      id, counter)
    return wrk.format("POST", nil, headers, body)
  end
  return wrk.format("GET", nil, headers)
end
function response(status, headers, body)
  if status == 202 or status == 200 then accepted = accepted + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local a, o = 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("accepted")
    o = o + t:get("other")
  end
  io.write(string.format("COUNTS %d %d %f\\n", a, o, summary.duration / 1e6))
  io.write(string.format("LATENCY p50=%.2fms p99=%.2fms\\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_live(base: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the ingress at {base} did not start")


def _login_latency(base: str, email: str, password: str, n: int = 20) -> list[float]:
    """Seconds per successful login, one at a time (argon2id with the configured parameters)."""
    times = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            answer = client.post("/v1/auth/login", json={"email": email, "password": password})
            times.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise RuntimeError(f"login: {answer.status_code} {answer.text}")
    return times


def _credentials(base: str, env: dict[str, str]) -> tuple[str, str]:
    """An admin from the CLI, its access token and an API key that may write knowledge."""
    email, password = f"bench-{uuid.uuid4().hex[:6]}@example.test", uuid.uuid4().hex
    created = subprocess.run(
        [*CLI, "users", "create-admin", "--email", email, "--password-stdin"],
        input=password + "\n", env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if created.returncode != 0:
        raise RuntimeError(f"create-admin failed: {created.stderr}")
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=base, timeout=30) as client:
        while True:
            login = client.post("/v1/auth/login", json={"email": email, "password": password})
            if login.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"login: {login.status_code} {login.text}")
            time.sleep(0.2)
        token = login.json()["access_token"]
        key = client.post(
            "/v1/api-keys",
            json={"name": "bench", "scopes": ["knowledge:write", "knowledge:read"]},
            headers={"Authorization": f"Bearer {token}", "Prefer": "wait=30"},
        ).json()["api_key"]
        while client.get("/v1/knowledge/documents", headers={"X-API-Key": key}).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the API key never became usable")
            time.sleep(0.1)
    logins = _login_latency(base, email, password)
    console.print(
        f"login with the default argon2id parameters: median {statistics.median(logins) * 1000:.1f}"
        f" ms, max {max(logins) * 1000:.1f} ms over {len(logins)} logins"
    )
    return token, key


def _wrk(url: str, script: Path, seconds: int, connections: int, *args: str) -> tuple[float, str]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         url, "--", *args],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"COUNTS (\d+) (\d+) ([\d.]+)", out)
    latency = re.search(r"LATENCY (.*)", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    accepted, other, duration = int(match[1]), int(match[2]), float(match[3])
    if other:
        console.print(f"[yellow]{other} answers were not 2xx on {url}[/yellow]")
    return accepted / duration, latency[1] if latency else ""


def main(*, seconds: int = 10, rounds: int = 3, connections: int = 32) -> None:
    if shutil.which("wrk") is None:
        console.print("[red]wrk is not installed[/red]: `apt-get install wrk` (Debian) or brew")
        raise SystemExit(2)
    with tempfile.TemporaryDirectory(prefix="uait-bench-ingress-") as tmp:
        data = Path(tmp)
        with EmbeddedStack(Settings(kafka_bootstrap="", database_url="", redis_url=""),
                           data_dir=data / "stack") as ep:  # fmt: skip
            env = {
                **os.environ,
                **generate_secrets(),
                "UAIT_KAFKA_BOOTSTRAP": ep.kafka_bootstrap,
                "UAIT_DATABASE_URL": ep.database_url,
                "UAIT_REDIS_URL": ep.redis_url,
                "UAIT_DATA_DIR": str(data),
                "UAIT_LOG_LEVEL": "WARNING",
                "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000",
                "UAIT_BENCH_BARE_ROUTE": "true",
                # The login measurement logs in 20 times from one address.
                # Every request is still checked and counted; the limits just never bite.
                "UAIT_RATE_LIMIT_POLICIES": '{"knowledge": {"limit": 1000000, "period_s": 1},'
                ' "default": {"limit": 1000000, "period_s": 1},'
                ' "login": {"limit": 1000, "period_s": 60}}',
            }
            settings = Settings(kafka_bootstrap=ep.kafka_bootstrap, database_url=ep.database_url)
            prepare(settings, REGISTRY.topic_specs(settings))
            port = _free_port()
            base = f"http://127.0.0.1:{port}"
            log = data / "processes.log"
            with _process([*CLI, "ingress", "--port", str(port)], env, log):
                try:
                    _wait_live(base)
                except TimeoutError:
                    console.print(log.read_text()[-3000:])
                    raise
                with (
                    _process([*CLI, "worker"], env, log),
                    _process([*CLI, "projections", "run"], env, log),
                ):
                    token, key = _credentials(base, env)
                _run(base, token, key, seconds=seconds, rounds=rounds, connections=connections,
                     script=data / "bench.lua")  # fmt: skip


def _run(
    base: str, token: str, key: str, *, seconds: int, rounds: int, connections: int, script: Path
) -> None:
    script.write_text(WRK_SCRIPT)
    docs = f"{base}/v1/knowledge/documents"
    variants = {
        "bare GET /bench/bare": (f"{base}/bench/bare", ("GET",)),
        "publish, bearer token": (docs, ("POST", "Authorization", f"Bearer {token}")),
        "publish, API key": (docs, ("POST", "X-API-Key", key)),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    latencies: dict[str, str] = {}
    for round_no in range(1, rounds + 1):
        for name, (url, args) in variants.items():
            rate, latency = _wrk(url, script, seconds, connections, *args)
            rates[name].append(rate)
            latencies[name] = latency
            console.print(f"round {round_no}: {name}: {rate:,.0f} req/s ({latency})")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    bare = medians["bare GET /bench/bare"]
    table = Table("path", "median req/s", "runs", "ratio to bare", "last latency")
    for name, values in rates.items():
        table.add_row(
            name,
            f"{medians[name]:,.0f}",
            " / ".join(f"{v:,.0f}" for v in values),
            f"{medians[name] / bare:.2f}",
            latencies[name],
        )
    console.print(table)
    ingress = medians["publish, bearer token"]
    print(f"ingress: {ingress:.0f} req/s, bare {bare:.0f} req/s, ratio {ingress / bare:.2f}")
