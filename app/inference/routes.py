"""The OpenAI-compatible API: chat and text completions (plain and streamed), and the models.

Each request is a ``RequestCompletion`` command through Kafka like every other state change:
the route publishes it, then reads the run's live stream (``app.runstream``) and answers in
OpenAI's shapes: one JSON object, or Server-Sent Events of chunks ending with ``data: [DONE]``.
A client that goes away does not stop the run (cancel it with ``POST
/v1/commands/{id}/cancel``); its result is in ``GET /v1/commands/{id}``. Errors are in OpenAI's
shape on these paths (``app.openai_errors``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import psycopg
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from psycopg_pool import PoolTimeout
from pydantic import ValidationError
from redis.exceptions import RedisError

from app.auth.principal import Principal, require
from app.commanding import note_accepted, status_url
from app.deps import Deps, deps
from app.inference import shapes
from app.inference.state import inference
from app.openai_errors import OPENAI_ERRORS, error_body, openai_responses
from app.runstream import follow, run_streams
from events.envelope import describe_validation_error
from events.ids import uuid7
from events.inference.commands import ChatMessage, RequestCompletion, RequestEmbeddings
from infra.publisher import BrokerUnavailableError, MessageTooLargeError

if TYPE_CHECKING:
    import uuid
    from collections.abc import AsyncIterator

    from infra.runstreams import Entry

log = logging.getLogger("uait.ingress")

router = APIRouter(prefix="/v1", tags=["inference"], responses=openai_responses(*OPENAI_ERRORS))

OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings")


class OpenAIError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse(
            error_body(self.status, self.message, code=self.code, param=self.param),
            status_code=self.status,
            headers=headers,
        )


@router.get("/models")
async def list_models(
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("models:read"))],
) -> Any:
    """The models of the registry (and their aliases), in OpenAI's list shape."""
    rows = await inference(d).models()
    data = []
    for row in rows:
        created = int(row["created_at"].timestamp())
        for name in (row["name"], *row["aliases"]):
            data.append({"id": name, "object": "model", "created": created, "owned_by": "uait"})
    return {"object": "list", "data": data}


@router.get("/models/{name:path}")
async def get_model(
    name: str,
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("models:read"))],
) -> Any:
    row = await inference(d).model(name)
    if row is None:
        return OpenAIError(
            404, f"The model {name!r} does not exist", code="model_not_found"
        ).response()
    return {
        "id": name,
        "object": "model",
        "created": int(row["created_at"].timestamp()),
        "owned_by": "uait",
    }


@router.post("/chat/completions")
async def chat_completions(
    body: shapes.ChatCompletionRequest,
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("inference:use"))],
) -> Any:
    """OpenAI's chat completions: `stream: true` for Server-Sent Events of chunks."""
    try:
        messages = [ChatMessage(role=m.role, content=m.text(), name=m.name) for m in body.messages]
    except (ValueError, ValidationError) as exc:
        return OpenAIError(400, _message(exc), param="messages").response()
    return await _complete(
        request,
        d,
        who,
        body,
        chat=True,
        fields={
            "messages": messages,
            "max_tokens": body.max_completion_tokens or body.max_tokens,
            "response_format": body.response_format,
        },
    )


@router.post("/completions")
async def completions(
    body: shapes.CompletionRequest,
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("inference:use"))],
) -> Any:
    """OpenAI's (legacy) text completions of a prompt."""
    try:
        prompt = body.text()
    except ValueError as exc:
        return OpenAIError(400, str(exc), param="prompt").response()
    return await _complete(
        request,
        d,
        who,
        body,
        chat=False,
        fields={
            "prompt": prompt,
            "max_tokens": body.max_tokens,
            "response_format": body.response_format,
        },
    )


@router.post("/embeddings")
async def embeddings(
    body: shapes.EmbeddingsRequest,
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    who: Annotated[Principal, Depends(require("inference:use"))],
) -> Any:
    """OpenAI's embeddings: one vector per input text (`encoding_format` float or base64)."""
    name = await _resolve(d, body.model)
    if name is None:
        return _no_model(body.model)
    try:
        command = RequestEmbeddings(
            request_id=uuid7().hex, model=name, input=body.texts(), user=body.user
        )
    except ValidationError as exc:
        return OpenAIError(400, describe_validation_error(exc), param="input").response()
    published = await _publish(request, d, who, command)
    if isinstance(published, JSONResponse):
        return published
    command_id, headers = published
    final = await _wait(d, command_id, headers)
    if isinstance(final, JSONResponse):
        return final
    return JSONResponse(shapes.embeddings(body.model, final, body.encoding_format), headers=headers)


async def _resolve(d: Deps, model: str) -> str | None:
    try:
        return await inference(d).resolve(model)
    except (psycopg.Error, PoolTimeout):
        return model  # the worker tells whether it exists


def _no_model(model: str) -> JSONResponse:
    return OpenAIError(
        404, f"The model {model!r} does not exist", code="model_not_found", param="model"
    ).response()


async def _publish(
    request: Request, d: Deps, who: Principal, command: RequestCompletion | RequestEmbeddings
) -> tuple[uuid.UUID, dict[str, str]] | JSONResponse:
    """Publish a command of this API; its id and the headers that name it, or an error."""
    await run_streams(d)  # no Redis: 503 before anything is published
    try:
        envelope = await d.publisher.publish(command, actor=who.actor)
    except MessageTooLargeError as exc:
        return OpenAIError(413, str(exc)).response()
    except BrokerUnavailableError:
        return OpenAIError(503, "the message broker is unavailable; retry later").response(
            {"Retry-After": "5"}
        )
    command_id = envelope.message_id
    await note_accepted(d, envelope, command, who.actor)
    headers = {
        "X-Uait-Command-Id": str(command_id),
        "X-Uait-Status-Url": status_url(request, command_id),
    }
    return command_id, headers


async def _wait(
    d: Deps, command_id: uuid.UUID, headers: dict[str, str]
) -> dict[str, Any] | JSONResponse:
    """The run's final entry, or the error to answer with."""
    try:
        final = await asyncio.wait_for(_final(d, command_id), d.settings.inference_wait_s)
    except TimeoutError:
        return OpenAIError(
            504,
            f"the request did not finish within {d.settings.inference_wait_s:g} s; it goes"
            f" on: see {headers['X-Uait-Status-Url']}",
            code="timeout",
        ).response(headers)
    except RedisError as exc:
        return OpenAIError(503, f"live stream unavailable: {exc}").response(headers)
    error = _error_of(final)
    if error is not None:
        return error.response(headers)
    return final


async def _complete(
    request: Request,
    d: Deps,
    who: Principal,
    body: shapes.ChatCompletionRequest | shapes.CompletionRequest,
    *,
    chat: bool,
    fields: dict[str, Any],
) -> Any:
    name = await _resolve(d, body.model)
    if name is None:
        return _no_model(body.model)
    request_id = uuid7().hex
    try:
        command = RequestCompletion(
            request_id=request_id,
            model=name,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stops(),
            user=body.user,
            **fields,
        )
    except ValidationError as exc:
        return OpenAIError(400, describe_validation_error(exc)).response()
    published = await _publish(request, d, who, command)
    if isinstance(published, JSONResponse):
        return published
    command_id, headers = published
    completion_id = f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(d, command_id, completion_id, created, body.model, chat, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    final = await _wait(d, command_id, headers)
    if isinstance(final, JSONResponse):
        return final
    shape = shapes.chat_completion if chat else shapes.text_completion
    return JSONResponse(shape(completion_id, created, body.model, final), headers=headers)


async def _final(d: Deps, command_id: uuid.UUID) -> dict[str, Any]:
    async for page in follow(d, command_id):
        if isinstance(page, dict):
            return _from_outcome(page)
        for entry in page or ():
            if (final := _result_of(entry)) is not None:
                return final
    raise RedisError("the stream ended without a result")


def _from_outcome(row: dict[str, Any]) -> dict[str, Any]:
    """A command that ended without a final stream entry (rejected before it ran)."""
    if row["status"] == "rejected":
        return {"status": "failed", "code": row.get("code"), "reason": row.get("reason")}
    return {"status": "succeeded", "text": "", "finish_reason": "stop"}


_STATUS = {
    "not_found": 404,
    "invalid": 400,
    "unauthorized": 403,
    "too_large": 413,
    "domain": 409,
    "cancelled": 409,
    "deadline": 504,
    "failed": 502,
}


def _error_of(final: dict[str, Any]) -> OpenAIError | None:
    if final.get("status") != "failed":
        return None
    code = str(final.get("code") or "failed")
    message = final.get("reason") or (final.get("error") or {}).get("message") or code
    return OpenAIError(_STATUS.get(code, 502), str(message), code=code)


async def _sse(
    d: Deps,
    command_id: uuid.UUID,
    completion_id: str,
    created: int,
    model: str,
    chat: bool,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    def event(data: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps(data) + b"\n\n"

    if chat:
        yield event(
            shapes.chat_chunk(completion_id, created, model, {"role": "assistant", "content": ""})
        )

    def token(text: str) -> bytes:
        return event(
            shapes.chat_chunk(completion_id, created, model, {"content": text})
            if chat
            else shapes.text_chunk(completion_id, created, model, text)
        )

    def ending(final: dict[str, Any]) -> bytes:
        error = _error_of(final)
        if error is not None:
            return event(error_body(error.status, error.message, code=error.code))
        reason = final.get("finish_reason", "stop")
        out = event(
            shapes.chat_chunk(completion_id, created, model, {}, reason)
            if chat
            else shapes.text_chunk(completion_id, created, model, "", reason)
        )
        if include_usage and final.get("usage"):
            usage = {
                "id": completion_id,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [],
                "usage": final["usage"],
            }
            out += event(usage)
        return out

    try:
        async for page in follow(d, command_id):
            if page is None:
                yield b": keep-alive\n\n"
            elif isinstance(page, dict):
                yield ending(_from_outcome(page))
            else:
                # What one read brought, in one write (many tokens when this reader fell behind);
                # the result ends it, as soon as it is known (``done``, before it is recorded).
                out = []
                final: dict[str, Any] | None = None
                for entry in page:
                    if entry.kind == "token":
                        out.append(token(entry.data["text"]))
                    elif (final := _result_of(entry)) is not None:
                        out.append(ending(final))
                        break
                yield b"".join(out)
                if final is not None:
                    break
    except RedisError as exc:
        yield event(error_body(503, f"live stream unavailable: {exc}"))
    yield b"data: [DONE]\n\n"


def _result_of(entry: Entry) -> dict[str, Any] | None:
    """The result an entry carries: a run's ``done`` (known, being recorded) or ``final``."""
    if entry.kind == "done":
        return entry.data["final"]  # type: ignore[no-any-return]
    return entry.data if entry.kind == "final" else None


def _message(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return describe_validation_error(exc)
    return str(exc)
