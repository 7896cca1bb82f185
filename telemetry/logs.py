"""Structured logs: JSON lines with the trace and the command they belong to.

Every line has ``timestamp``, ``level``, ``logger``, ``message``, and when known ``trace_id``,
``span_id`` (from the current OpenTelemetry span), ``correlation_id`` and ``command_id`` (from
context variables that the ingress and workers set). Credentials in URLs and ``password=`` /
``token=`` / bearer values are masked before anything is written.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

import orjson
from opentelemetry import trace

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)
command_id: ContextVar[str | None] = ContextVar("command_id", default=None)

_SECRETS = (
    (re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"(?i)\b(password|passwd|secret|token|api[_-]?key)=([^\s&;,]+)"), r"\1=***"),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 ***"),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = format(span.trace_id, "032x")
            line["span_id"] = format(span.span_id, "016x")
        if (cid := correlation_id.get()) is not None:
            line["correlation_id"] = cid
        if (cmd := command_id.get()) is not None:
            line["command_id"] = cmd
        if record.exc_info:
            line["exception"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(line).decode()


class RedactingFormatter(logging.Formatter):
    """The human-readable format (``uait dev``), with the same masking."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def setup_logging(fmt: Literal["json", "text"], level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            RedactingFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that log per message or per request stay at warnings.
    for noisy in ("aiokafka", "faststream.access", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
