from __future__ import annotations

import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from telemetry import logs
from telemetry.logs import JsonFormatter, redact


def record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uait.test", logging.WARNING, __file__, 1, message, args, None)


def test_a_log_line_is_json_with_the_standard_fields():
    line = json.loads(JsonFormatter().format(record("hello %s", "world")))
    assert line["message"] == "hello world"
    assert (line["level"], line["logger"]) == ("WARNING", "uait.test")
    assert line["timestamp"].endswith("+00:00")
    assert "trace_id" not in line


def test_a_log_line_carries_the_current_trace_and_command():
    tracer = TracerProvider().get_tracer("t")
    token_cmd = logs.command_id.set("cmd-1")
    token_cor = logs.correlation_id.set("cor-1")
    try:
        with tracer.start_as_current_span("s") as span:
            line = json.loads(JsonFormatter().format(record("x")))
            ctx = span.get_span_context()
    finally:
        logs.command_id.reset(token_cmd)
        logs.correlation_id.reset(token_cor)
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")
    assert (line["command_id"], line["correlation_id"]) == ("cmd-1", "cor-1")


def test_credentials_are_masked_before_they_are_written():
    text = (
        "db postgresql://uait:s3cret@db:5432/uait, password=hunter2 token=abc.def "
        "Authorization: Bearer eyJhbGciOi.x.y api_key=K123"
    )
    masked = redact(text)
    for secret in ("s3cret", "hunter2", "abc.def", "eyJhbGciOi", "K123"):
        assert secret not in masked
    assert "postgresql://uait:***@db:5432/uait" in masked
    line = json.loads(JsonFormatter().format(record("connecting to %s", text)))
    assert "hunter2" not in line["message"]
