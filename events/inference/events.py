"""Events of the inference context."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from events.base import Event, register
from events.inference.commands import ChatMessage, ModelSpec


@register
class ModelRegistered(Event):
    TYPE: ClassVar[str] = "ModelRegistered"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    name: str
    spec: ModelSpec


@register
class ModelUpdated(Event):
    TYPE: ClassVar[str] = "ModelUpdated"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    name: str
    spec: ModelSpec


@register
class ModelRetired(Event):
    TYPE: ClassVar[str] = "ModelRetired"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    name: str


@register
class CompletionAccepted(Event):
    """A completion request accepted for a run, with the model it resolved to at that time."""

    TYPE: ClassVar[str] = "CompletionAccepted"
    VERSION: ClassVar[int] = 1

    request_id: str
    command_id: str
    model: str
    spec: ModelSpec
    messages: list[ChatMessage] | None
    prompt: str | None
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    response_format: dict[str, Any] | None
    user: str | None


@register
class CompletionProduced(Event):
    """The completion's result (a run's one successful outcome)."""

    TYPE: ClassVar[str] = "CompletionProduced"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    request_id: str
    model: str
    text: str
    finish_reason: Literal["stop", "length"]
    prompt_tokens: int
    completion_tokens: int
    endpoint: str
    latency_ms: float
    time_to_first_token_ms: float | None
    attempts: int


@register
class CompletionCancelled(Event):
    """The completion stopped early: cancelled on request, or out of its budget."""

    TYPE: ClassVar[str] = "CompletionCancelled"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    request_id: str
    model: str
    reason: Literal["cancelled", "deadline", "budget"]
    text: str
    completion_tokens: int
    endpoint: str | None


@register
class CompletionFailed(Event):
    TYPE: ClassVar[str] = "CompletionFailed"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    request_id: str
    model: str
    error: str
    completion_tokens: int
    endpoint: str | None


@register
class EmbeddingsAccepted(Event):
    TYPE: ClassVar[str] = "EmbeddingsAccepted"
    VERSION: ClassVar[int] = 1

    request_id: str
    command_id: str
    model: str
    spec: ModelSpec
    input: list[str]
    user: str | None


@register
class EmbeddingsProduced(Event):
    """The embeddings were computed (and handed to the caller through the live stream)."""

    TYPE: ClassVar[str] = "EmbeddingsProduced"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    request_id: str
    model: str
    count: int
    dimensions: int
    prompt_tokens: int
    endpoint: str
    latency_ms: float


@register
class EmbeddingsFailed(Event):
    TYPE: ClassVar[str] = "EmbeddingsFailed"
    VERSION: ClassVar[int] = 1
    PUBLIC: ClassVar[bool] = True

    request_id: str
    model: str
    error: str
