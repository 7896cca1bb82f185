"""Per-request telemetry: RED metrics by route template (never the raw path) and a server span."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry.trace import SpanKind, StatusCode

from telemetry.metrics import HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, HTTP_WAIT_DURATION
from telemetry.tracing import extract, tracer, tracing_enabled

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "<unmatched>"


class RequestMetrics:
    """ASGI middleware: requests by route/method/status, duration histogram, in flight."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what a crash before the response starts will be answered with
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, observing_send)
        finally:
            HTTP_IN_FLIGHT.dec()
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            method = scope["method"]
            HTTP_REQUESTS.labels(template, method, str(status)).inc()
            # Requests that asked to wait (Prefer: wait, ?after=) are timed apart: their
            # duration is the client's choice and would drown the latency SLO.
            histogram = HTTP_WAIT_DURATION if _asked_to_wait(scope) else HTTP_DURATION
            histogram.labels(template, method).observe(time.perf_counter() - started)


def _asked_to_wait(scope: Scope) -> bool:
    if b"after=" in scope.get("query_string", b""):
        return True
    return any(name == b"prefer" and b"wait" in value.lower() for name, value in scope["headers"])


class RequestTracing:
    """ASGI middleware: one SERVER span per request, continuing an incoming ``traceparent``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing_enabled():
            # No exporter: no span to record; skip even the no-op span's cost per request.
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        with tracer().start_as_current_span(
            method,
            context=extract(headers),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
        ) as span:

            async def observing_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    span.set_attribute("http.response.status_code", message["status"])
                    if message["status"] >= 500:
                        span.set_status(StatusCode.ERROR)
                await send(message)

            try:
                await self.app(scope, receive, observing_send)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route:
                    span.set_attribute("http.route", route)
                    span.update_name(f"{method} {route}")
