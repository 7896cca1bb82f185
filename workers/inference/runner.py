"""The run of a completion: generate through the model's backend, stream the tokens live, and
record the result.

A run that another worker takes over (after a crash or a hand-over) reads the tokens the
earlier attempt streamed and asks the backend to continue after them, so a reader of the live
stream sees every token once: nothing repeated, nothing lost.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from events.inference.commands import RequestCompletion, RequestEmbeddings
from events.inference.events import (
    CompletionAccepted,
    CompletionCancelled,
    CompletionFailed,
    CompletionProduced,
    EmbeddingsAccepted,
    EmbeddingsFailed,
    EmbeddingsProduced,
)
from telemetry.metrics import (
    INFERENCE_OUTSTANDING,
    INFERENCE_QUEUE_TIME,
    INFERENCE_TIME_TO_FIRST_TOKEN,
    INFERENCE_TOKENS,
)
from telemetry.tracing import tracer
from workers.inference.backend import BackendError, BadRequestError, Delta, Finish, Generation
from workers.runs import RunResult

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from events.inference.commands import ModelSpec
    from infra.settings import Settings
    from workers.inference.backend import Backend
    from workers.runs import RunContext

log = logging.getLogger("uait.inference")


class Backends:
    """The backends of this worker: one in-process MLX backend, one client per endpoint."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._mlx: Backend | None = None
        self._http: dict[tuple[str, str], Backend] = {}
        self.limits: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(settings.inference_endpoint_concurrency)
        )

    def for_spec(self, spec: ModelSpec) -> tuple[Backend, str]:
        """The backend for a model, and the endpoint it goes to (the seam for routing)."""
        if spec.backend == "mlx":
            if self._mlx is None:
                from workers.inference.mlx_backend import MlxBackend

                self._mlx = MlxBackend(max_models=self.settings.inference_max_models)
            return self._mlx, f"mlx:{spec.source}"
        url = spec.endpoints[0]
        key = (url, spec.dialect)
        backend = self._http.get(key)
        if backend is None:
            from workers.inference.openai_backend import endpoint_backend

            backend = self._http[key] = endpoint_backend(self.settings, url, spec.dialect)
        return backend, url


class CompletionRunner:
    """The ``RunHandler`` of ``RequestCompletion``."""

    def __init__(self, settings: Settings) -> None:
        self.backends = Backends(settings)

    @property
    def command_types(self) -> frozenset[str]:
        return frozenset({RequestCompletion.TYPE, RequestEmbeddings.TYPE})

    async def run(self, run: RunContext) -> RunResult:
        if isinstance(run.events[0], EmbeddingsAccepted):
            return await self._embed(run, run.events[0])
        accepted = next(e for e in run.events if isinstance(e, CompletionAccepted))
        earlier = [e for e in await run.streamed() if e.kind == "token"]
        prefix = "".join(e.data["text"] for e in earlier)
        prefix_tokens = sum(int(e.data.get("n", 1)) for e in earlier)
        backend, endpoint = self.backends.for_spec(accepted.spec)
        request = Generation(
            model=accepted.model,
            source=accepted.spec.source,
            messages=[m.model_dump(exclude_none=True) for m in accepted.messages]
            if accepted.messages is not None
            else None,
            prompt=accepted.prompt,
            # The whole budget: a backend counts the prefix's tokens in it.
            max_tokens=accepted.max_tokens,
            temperature=accepted.temperature,
            top_p=accepted.top_p,
            seed=accepted.seed,
            stop=tuple(accepted.stop),
            response_format=accepted.response_format,
            prefix=prefix,
            prefix_tokens=prefix_tokens,
        )
        started = time.monotonic()
        first: float | None = None
        pieces = [prefix]
        tokens = prefix_tokens
        finish: Finish | None = None
        limit = self.backends.limits[endpoint]
        outstanding = INFERENCE_OUTSTANDING.labels(accepted.model, endpoint)
        outstanding.inc()
        span = tracer().start_span(
            f"generate {accepted.model}",
            attributes={"uait.model": accepted.model, "uait.endpoint": endpoint},
        )
        try:
            async with limit:
                queued = datetime.now(UTC) - run.claim.accepted_at
                INFERENCE_QUEUE_TIME.labels(accepted.model, endpoint).observe(
                    max(queued.total_seconds(), 0.0)
                )
                if run.claim.attempt == 1 and not prefix:
                    await run.emit([("started", {"model": accepted.model, "endpoint": endpoint})])
                if prefix_tokens >= accepted.max_tokens:  # it had all; only the record was lost
                    stream: Any = _done(Finish("length", 0, prefix_tokens, endpoint))
                else:
                    stream = backend.generate(
                        request, cancelled=lambda: run.stop_reason() is not None
                    )
                async for item in stream:
                    if isinstance(item, Delta):
                        if first is None:
                            first = time.monotonic()
                            INFERENCE_TIME_TO_FIRST_TOKEN.labels(accepted.model, endpoint).observe(
                                first - started
                            )
                        pieces.append(item.text)
                        tokens += item.tokens
                        run.spend(item.tokens)
                        await run.emit([("token", {"text": item.text, "n": item.tokens})])
                    else:
                        finish = item
        except BadRequestError as exc:
            return _failed(accepted, str(exc), tokens, endpoint, code="invalid")
        except BackendError as exc:
            if run.stop in ("handover", "lost"):
                raise
            return _failed(accepted, str(exc), tokens, endpoint)
        finally:
            outstanding.dec()
            span.set_attribute("uait.completion_tokens", tokens)
            if first is not None:
                span.set_attribute("uait.time_to_first_token_s", first - started)
            span.end()
        text = "".join(pieces)
        INFERENCE_TOKENS.labels(accepted.model, endpoint).inc(max(tokens - prefix_tokens, 0))
        stopped = run.stop_reason()
        if stopped in ("cancelled", "deadline", "budget") or (
            finish and finish.reason == "cancelled"
        ):
            reason = stopped if stopped in ("cancelled", "deadline", "budget") else "cancelled"
            event = CompletionCancelled(
                request_id=accepted.request_id,
                model=accepted.model,
                reason=reason,
                text=text,
                completion_tokens=tokens,
                endpoint=finish.endpoint if finish else endpoint,
            )
            return RunResult(
                events=[event],
                rejected="cancelled" if reason == "cancelled" else "deadline",
                detail=f"{reason} after {tokens} tokens",
                final={"text": text, "finish_reason": reason, "usage": _usage(finish, tokens)},
            )
        if finish is None:
            return _failed(accepted, "the backend ended without a result", tokens, endpoint)
        ended = time.monotonic()
        produced = CompletionProduced(
            request_id=accepted.request_id,
            model=accepted.model,
            text=text,
            finish_reason="length" if finish.reason == "length" else "stop",
            prompt_tokens=finish.prompt_tokens,
            completion_tokens=finish.completion_tokens,
            endpoint=finish.endpoint,
            latency_ms=round((ended - started) * 1000, 3),
            time_to_first_token_ms=round((first - started) * 1000, 3) if first else None,
            attempts=run.claim.attempt,
        )
        return RunResult(
            events=[produced],
            detail=f"{produced.finish_reason}, {produced.completion_tokens} tokens",
            final={
                "text": text,
                "finish_reason": produced.finish_reason,
                "model": accepted.model,
                "endpoint": produced.endpoint,
                "usage": _usage(finish, tokens),
            },
        )

    async def _embed(self, run: RunContext, accepted: EmbeddingsAccepted) -> RunResult:
        backend, endpoint = self.backends.for_spec(accepted.spec)
        started = time.monotonic()
        try:
            async with self.backends.limits[endpoint]:
                embedded = await backend.embed(accepted.spec.source, accepted.input)
        except BackendError as exc:
            failed = EmbeddingsFailed(
                request_id=accepted.request_id, model=accepted.model, error=str(exc)[:2000]
            )
            return RunResult(
                events=[failed],
                rejected="invalid" if isinstance(exc, BadRequestError) else "failed",
                detail=str(exc)[:2000],
                final={"error": {"message": str(exc)[:2000]}},
            )
        dimensions = len(embedded.vectors[0]) if embedded.vectors else 0
        produced = EmbeddingsProduced(
            request_id=accepted.request_id,
            model=accepted.model,
            count=len(embedded.vectors),
            dimensions=dimensions,
            prompt_tokens=embedded.prompt_tokens,
            endpoint=embedded.endpoint,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
        )
        return RunResult(
            events=[produced],
            detail=f"{produced.count} vectors of {dimensions}",
            final={
                "embeddings": embedded.vectors,
                "model": accepted.model,
                "usage": {
                    "prompt_tokens": embedded.prompt_tokens,
                    "total_tokens": embedded.prompt_tokens,
                },
            },
        )


async def _done(finish: Finish) -> AsyncIterator[Finish]:
    yield finish


def _usage(finish: Finish | None, tokens: int) -> dict[str, int]:
    prompt = finish.prompt_tokens if finish else 0
    completion = finish.completion_tokens if finish else tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _failed(
    accepted: CompletionAccepted, error: str, tokens: int, endpoint: str, *, code: str = "failed"
) -> RunResult:
    event = CompletionFailed(
        request_id=accepted.request_id,
        model=accepted.model,
        error=error[:2000],
        completion_tokens=tokens,
        endpoint=endpoint,
    )
    return RunResult(
        events=[event],
        rejected="invalid" if code == "invalid" else "failed",
        detail=error[:2000],
        final={
            "error": {
                "message": error[:2000],
                "type": "invalid_request_error" if code == "invalid" else "backend_error",
            }
        },
    )
