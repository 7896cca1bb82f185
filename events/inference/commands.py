"""Commands of the inference context: the model registry, and completions."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from events.base import Command, register

ModelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"),
]
RequestId = Annotated[
    str, StringConstraints(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=64)]
EndpointUrl = Annotated[
    str, StringConstraints(min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$")
]
Backend = Literal["mlx", "openai"]
Dialect = Literal["openai", "llamacpp"]

MAX_COMPLETION_TOKENS = 32_768
MAX_MESSAGE_CHARS = 256 * 1024


class Sampling(BaseModel):
    """A model's default sampling (a request's own values win)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: Annotated[float, Field(ge=0, le=2)] = 0.7
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    max_tokens: Annotated[int, Field(ge=1, le=MAX_COMPLETION_TOKENS)] = 256


class ModelSpec(BaseModel):
    """What the registry knows of a model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Backend
    source: Annotated[str, StringConstraints(min_length=1, max_length=2000)]
    """A local model folder (``mlx``), or the upstream model id (``openai``)."""
    endpoints: Annotated[list[EndpointUrl], Field(max_length=16)] = []
    """Base URLs of OpenAI-compatible servers (``openai``)."""
    dialect: Dialect = "openai"
    """How the upstream takes ``response_format`` (llama.cpp's server: ``llamacpp``)."""
    context_length: Annotated[int, Field(ge=16, le=10_000_000)] = 4096
    sampling: Sampling = Sampling()
    fallbacks: Annotated[list[ModelName], Field(max_length=8)] = []
    aliases: Annotated[list[ModelName], Field(max_length=16)] = []
    tags: Annotated[list[Tag], Field(max_length=32)] = []

    @model_validator(mode="after")
    def _endpoints_for_http(self) -> ModelSpec:
        if self.backend == "openai" and not self.endpoints:
            raise ValueError("an openai backend needs at least one endpoint URL")
        if self.backend == "mlx" and self.endpoints:
            raise ValueError("an mlx model is served in process: it has no endpoints")
        return self


class InferenceCommand(Command):
    CONTEXT: ClassVar[str] = "inference"


class ModelCommand(InferenceCommand):
    name: ModelName

    def partition_key(self) -> str:
        return f"model:{self.name}"


@register
class RegisterModel(ModelCommand):
    """Add a model to the registry (or bring a retired name back)."""

    TYPE: ClassVar[str] = "RegisterModel"
    PERMISSION: ClassVar[str] = "models:write"
    VERSION: ClassVar[int] = 1

    spec: ModelSpec


@register
class UpdateModel(ModelCommand):
    """Replace a registered model's spec."""

    TYPE: ClassVar[str] = "UpdateModel"
    PERMISSION: ClassVar[str] = "models:write"
    VERSION: ClassVar[int] = 1

    spec: ModelSpec


@register
class RetireModel(ModelCommand):
    """Take a model out of service: new requests for it are refused; history stays."""

    TYPE: ClassVar[str] = "RetireModel"
    PERMISSION: ClassVar[str] = "models:write"
    VERSION: ClassVar[int] = 1


class ChatMessage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS)]
    name: Annotated[str, StringConstraints(max_length=64)] | None = None


@register
class RequestCompletion(InferenceCommand):
    """Generate a completion of chat ``messages`` or of a plain ``prompt`` (exactly one).

    A long-running command: the worker accepts it durably, then a run generates it, streams its
    tokens live (``GET /v1/commands/{id}/stream``) and records ``CompletionProduced`` (or
    ``CompletionCancelled`` / ``CompletionFailed``) as its one outcome.
    """

    TYPE: ClassVar[str] = "RequestCompletion"
    PERMISSION: ClassVar[str] = "inference:use"
    VERSION: ClassVar[int] = 1

    request_id: RequestId
    """The caller's id of this request (the key of its run: one run per request id)."""
    model: ModelName
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=512)] | None = None
    prompt: Annotated[str, StringConstraints(max_length=MAX_MESSAGE_CHARS)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_COMPLETION_TOKENS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: int | None = None
    stop: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=64)]], Field(max_length=4)
    ] = []
    response_format: dict[str, Any] | None = None
    """OpenAI's: ``{"type": "text" | "json_object"}`` or ``{"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}}}``."""
    user: Annotated[str, StringConstraints(max_length=256)] | None = None
    max_wall_s: Annotated[float, Field(gt=0, le=86_400)] | None = None
    """Its wall-time budget (default ``UAIT_RUN_MAX_WALL_S``)."""

    def partition_key(self) -> str:
        return self.request_id

    @model_validator(mode="after")
    def _one_input(self) -> RequestCompletion:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of messages and prompt")
        return self

    @field_validator("response_format")
    @classmethod
    def _known_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        kind = value.get("type")
        if kind not in ("text", "json_object", "json_schema"):
            raise ValueError("response_format.type must be text, json_object or json_schema")
        if kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise ValueError("response_format.json_schema must be an object with a schema")
        return value


@register
class RequestEmbeddings(InferenceCommand):
    """Embed ``input`` texts with a model: a long-running command like a completion; the
    vectors are its live stream's final entry (the event records their shape, not them)."""

    TYPE: ClassVar[str] = "RequestEmbeddings"
    PERMISSION: ClassVar[str] = "inference:use"
    VERSION: ClassVar[int] = 1

    request_id: RequestId
    model: ModelName
    input: Annotated[
        list[Annotated[str, StringConstraints(min_length=1, max_length=MAX_MESSAGE_CHARS)]],
        Field(min_length=1, max_length=256),
    ]
    user: Annotated[str, StringConstraints(max_length=256)] | None = None

    def partition_key(self) -> str:
        return self.request_id
