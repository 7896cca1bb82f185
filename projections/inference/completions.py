"""The ``inference_completions`` read model: each completion request, its status and result."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from events.inference.events import (
    CompletionAccepted,
    CompletionCancelled,
    CompletionFailed,
    CompletionProduced,
)

if TYPE_CHECKING:
    from psycopg import Cursor

    from projections.base import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS inference_completions (
    request_id        text PRIMARY KEY,
    run_id            uuid NOT NULL,
    command_id        uuid NOT NULL,
    actor             text,
    model             text NOT NULL,
    status            text NOT NULL,
    finish_reason     text,
    text              text,
    error             text,
    prompt_tokens     integer,
    completion_tokens integer,
    endpoint          text,
    latency_ms        double precision,
    ttft_ms           double precision,
    attempts          integer,
    accepted_at       timestamptz NOT NULL,
    finished_at       timestamptz,
    position          bigint NOT NULL
);
"""

INDEXES = """
CREATE INDEX IF NOT EXISTS inference_completions_command_idx ON inference_completions (command_id);
CREATE INDEX IF NOT EXISTS inference_completions_model_idx
    ON inference_completions (model, accepted_at);
"""


class CompletionsProjection:
    name: ClassVar[str] = "inference.completions"
    context: ClassVar[str] = "inference"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("inference_completions",)
    topics: ClassVar[frozenset[str]] = frozenset(
        {
            CompletionAccepted.TYPE,
            CompletionProduced.TYPE,
            CompletionCancelled.TYPE,
            CompletionFailed.TYPE,
        }
    )

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        cur.execute(SCHEMA)
        if indexes:
            self.create_indexes(cur)

    def create_indexes(self, cur: Cursor[Any]) -> None:
        cur.execute(INDEXES)

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        for env in batch:
            ev = env.event
            if isinstance(ev, CompletionAccepted):
                cur.execute(
                    "INSERT INTO inference_completions (request_id, run_id, command_id, actor,"
                    " model, status, accepted_at, position)"
                    " VALUES (%s, %s, %s, %s, %s, 'running', %s, %s)"
                    " ON CONFLICT (request_id) DO NOTHING",
                    (
                        ev.request_id,
                        env.aggregate_id,
                        ev.command_id,
                        env.meta.get("actor"),
                        ev.model,
                        env.occurred_at,
                        env.position,
                    ),
                )
            elif isinstance(ev, CompletionProduced):
                cur.execute(
                    "UPDATE inference_completions SET status = 'completed', finish_reason = %s,"
                    " text = %s, prompt_tokens = %s, completion_tokens = %s, endpoint = %s,"
                    " latency_ms = %s, ttft_ms = %s, attempts = %s, finished_at = %s,"
                    " position = %s WHERE request_id = %s",
                    (
                        ev.finish_reason,
                        ev.text,
                        ev.prompt_tokens,
                        ev.completion_tokens,
                        ev.endpoint,
                        ev.latency_ms,
                        ev.time_to_first_token_ms,
                        ev.attempts,
                        env.occurred_at,
                        env.position,
                        ev.request_id,
                    ),
                )
            elif isinstance(ev, CompletionCancelled):
                cur.execute(
                    "UPDATE inference_completions SET status = 'cancelled', finish_reason = %s,"
                    " text = %s, completion_tokens = %s, endpoint = %s, finished_at = %s,"
                    " position = %s WHERE request_id = %s",
                    (
                        ev.reason,
                        ev.text,
                        ev.completion_tokens,
                        ev.endpoint,
                        env.occurred_at,
                        env.position,
                        ev.request_id,
                    ),
                )
            elif isinstance(ev, CompletionFailed):
                cur.execute(
                    "UPDATE inference_completions SET status = 'failed', error = %s,"
                    " completion_tokens = %s, endpoint = %s, finished_at = %s, position = %s"
                    " WHERE request_id = %s",
                    (
                        ev.error,
                        ev.completion_tokens,
                        ev.endpoint,
                        env.occurred_at,
                        env.position,
                        ev.request_id,
                    ),
                )
