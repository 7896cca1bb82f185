"""OpenTelemetry tracing: one trace per request, across the ingress, Kafka, workers and projections.

The W3C trace context travels in each Kafka record's headers (``traceparent``/``tracestate``) and
in the envelope, and from the worker into the stored events' metadata, so the projection update of
an event joins the trace of the request that caused it.

Export is off unless configured: ``OTEL_EXPORTER_OTLP_ENDPOINT`` sends spans over OTLP/HTTP, and
``UAIT_TRACES_FILE`` appends them as JSON lines to a file (one file per process is fine: each line
is one finished span). With neither, the no-op tracer costs next to nothing.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan

TRACER_NAME = "uait"
_configured = False


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file as one JSON object per line."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [span.to_json(indent=None) for span in spans]
        with self._lock, open(self.path, "a", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(json.loads(line), separators=(",", ":")) + "\n")
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def setup_tracing(service_name: str) -> bool:
    """Install a tracer provider if an exporter is configured; True when spans are exported."""
    global _configured
    if _configured:
        return True
    exporters: list[Any] = []
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(BatchSpanProcessor(OTLPSpanExporter()))
    if path := os.environ.get("UAIT_TRACES_FILE"):
        # Simple (synchronous) processor: a span is on disk when it ends, so a test can read it.
        exporters.append(SimpleSpanProcessor(JsonLinesExporter(path)))
    if not exporters:
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    for processor in exporters:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def tracing_enabled() -> bool:
    """True when spans are exported (hot paths skip building spans otherwise)."""
    return _configured


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject_headers(context: Context | None = None) -> dict[str, str]:
    """The W3C trace context of ``context`` (default: the current one) as header values."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract(carrier: Mapping[str, str]) -> Context:
    return propagate.extract(carrier)


def current_traceparent() -> str | None:
    return inject_headers().get("traceparent")
