"""Health in the IETF ``application/health+json`` draft format, and the small ops HTTP server.

Workers and projection runners have no web framework, so a tiny threaded server gives them the
same endpoints as the ingress: ``/metrics``, ``/livez`` (the process answers), ``/readyz`` (no
check fails) and ``/health`` (every check, its observed latency, ``warn`` for what degrades
without failing, such as a lagging projection). Results are cached for a second, so a busy
scraper cannot turn health checks into load.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from telemetry.metrics import REGISTRY

if TYPE_CHECKING:
    from collections.abc import Callable

Status = Literal["pass", "warn", "fail"]
HEALTH_JSON = "application/health+json"


@dataclass(frozen=True)
class CheckResult:
    status: Status
    output: str = ""
    observed_ms: float | None = None


def timed(fn: Callable[[], str | None]) -> CheckResult:
    """Run a probe: it returns None (pass), a warning text (warn), or raises (fail)."""
    started = time.perf_counter()
    try:
        warning = fn()
    except Exception as exc:
        return CheckResult("fail", f"{type(exc).__name__}: {exc}"[:300])
    elapsed = (time.perf_counter() - started) * 1000
    return CheckResult("warn" if warning else "pass", warning or "", round(elapsed, 2))


def health_document(service: str, results: dict[str, CheckResult]) -> dict[str, Any]:
    """The ``application/health+json`` body for these check results."""
    statuses = {r.status for r in results.values()}
    overall: Status = "pass"
    if "fail" in statuses:
        overall = "fail"
    elif "warn" in statuses:
        overall = "warn"
    at = datetime.now(UTC).isoformat()
    checks: dict[str, Any] = {}
    for name, r in results.items():
        entry: dict[str, Any] = {"status": r.status, "time": at}
        if r.observed_ms is not None:
            entry.update(observedValue=r.observed_ms, observedUnit="ms")
        if r.output:
            entry["output"] = r.output
        checks[f"{name}:responseTime"] = [entry]
    return {"status": overall, "serviceId": service, "checks": checks}


class Health:
    def __init__(self, service: str, checks: dict[str, Callable[[], CheckResult]]) -> None:
        self.service = service
        self.checks = checks
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, Any]] | None = None

    def report(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < 1.0:
                return self._cached[1]
            results = {name: check() for name, check in self.checks.items()}
            body = health_document(self.service, results)
            self._cached = (now, body)
            return body


def serve_ops(host: str, port: int, health: Health) -> ThreadingHTTPServer:
    """Start /metrics, /livez, /readyz and /health on ``host:port`` in a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest(REGISTRY))
            elif path == "/livez":
                self._send(200, HEALTH_JSON, orjson.dumps({"status": "pass"}))
            elif path in ("/readyz", "/health"):
                report = health.report()
                code = 503 if report["status"] == "fail" else 200
                body = report if path == "/health" else {"status": report["status"]}
                self._send(code, HEALTH_JSON, orjson.dumps(body))
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # scrapes every few seconds would drown the logs

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="ops-http").start()
    return server
