"""What every inference backend offers: a generation streamed token by token.

A backend turns a ``Generation`` (chat messages or a prompt, sampling, an optional response
format, and the assistant text already produced by an earlier attempt) into a stream of
``Delta``s ending with one ``Finish``. It checks ``cancelled`` between two tokens and stops with
``finish_reason="cancelled"``. Errors before the first token may be retried by the caller;
after it, the caller resumes with ``prefix`` set to what was streamed so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class Generation:
    """One generation request, already validated."""

    model: str
    """The model's name in the registry (a backend serving several knows it by ``source``)."""
    source: str
    """Where the weights are (a local folder, MLX) or the upstream model id (HTTP backends)."""
    messages: list[dict[str, Any]] | None = None
    """Chat messages (``role``, ``content``), or None for a plain ``prompt``."""
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    response_format: dict[str, Any] | None = None
    """OpenAI's ``response_format``: ``{"type": "json_object"}`` or ``{"type": "json_schema",
    "json_schema": {"name": ..., "schema": {...}}}`` (``{"type": "text"}`` or None: free text)."""
    prefix: str = ""
    """Assistant text already produced (and streamed) by an earlier attempt: continue after it."""
    prefix_tokens: int = 0
    """How many tokens ``prefix`` counted when it was produced (part of ``completion_tokens``)."""


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: int = 1


@dataclass(frozen=True)
class Finish:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    """Tokens of the whole completion, the prefix's included."""
    endpoint: str
    """Which endpoint answered (``mlx:<folder>`` in process, or the server's base URL)."""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Embedded:
    """Vectors of some texts, in order (L2-normalised by the MLX backend)."""

    vectors: list[list[float]]
    prompt_tokens: int
    endpoint: str


class Backend(Protocol):
    name: str

    async def embed(self, source: str, texts: list[str]) -> Embedded:
        """One vector per text (raises like ``generate``)."""
        ...

    def generate(
        self, request: Generation, *, cancelled: Callable[[], bool]
    ) -> AsyncIterator[Delta | Finish]:
        """Deltas in order, then exactly one Finish (raises on failure)."""
        ...


class BackendError(Exception):
    """A backend could not answer (before the first token, it may be retried)."""


class BadRequestError(BackendError):
    """The request cannot be served as given (e.g. an invalid JSON schema); never retried."""
