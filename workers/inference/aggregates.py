"""Aggregates of the inference context: a registered model, and a completion's run."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from events.inference.events import (
    CompletionAccepted,
    CompletionCancelled,
    CompletionFailed,
    CompletionProduced,
    EmbeddingsAccepted,
    EmbeddingsFailed,
    EmbeddingsProduced,
    ModelRegistered,
    ModelRetired,
    ModelUpdated,
)
from workers.aggregate import Aggregate, DomainRuleError

if TYPE_CHECKING:
    from events.base import Event
    from events.inference.commands import ModelSpec


class NotFoundError(DomainRuleError):
    code = "not_found"


class Model(Aggregate):
    SNAPSHOT_VERSION: ClassVar[int | None] = None

    def __init__(self, aggregate_id: Any) -> None:
        super().__init__(aggregate_id)
        self.name = ""
        self.spec: ModelSpec | None = None
        self.retired = False

    @property
    def active(self) -> bool:
        return self.spec is not None and not self.retired

    def register(self, name: str, spec: ModelSpec) -> None:
        if self.active:
            raise DomainRuleError(f"model {name!r} is already registered (use UpdateModel)")
        self.record(ModelRegistered(name=name, spec=spec))

    def update(self, name: str, spec: ModelSpec) -> None:
        if not self.active:
            raise NotFoundError(f"no model {name!r}")
        if spec == self.spec:
            return
        self.record(ModelUpdated(name=name, spec=spec))

    def retire(self, name: str) -> None:
        if not self.active:
            raise NotFoundError(f"no model {name!r}")
        self.record(ModelRetired(name=name))

    def apply(self, event: Event) -> None:
        if isinstance(event, ModelRegistered | ModelUpdated):
            self.name, self.spec, self.retired = event.name, event.spec, False
        elif isinstance(event, ModelRetired):
            self.retired = True


class Completion(Aggregate):
    """One completion (or embeddings) request's run: accepted, then exactly one of produced /
    cancelled / failed."""

    SNAPSHOT_VERSION: ClassVar[int | None] = None

    def __init__(self, aggregate_id: Any) -> None:
        super().__init__(aggregate_id)
        self.command_id: str | None = None
        self.finished = False

    def apply(self, event: Event) -> None:
        if isinstance(event, CompletionAccepted | EmbeddingsAccepted):
            self.command_id = event.command_id
        elif isinstance(
            event,
            CompletionProduced
            | CompletionCancelled
            | CompletionFailed
            | EmbeddingsProduced
            | EmbeddingsFailed,
        ):
            self.finished = True
