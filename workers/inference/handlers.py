"""Decisions of the inference context: the model registry, and accepting completions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from events.ids import model_aggregate_id, run_aggregate_id
from events.inference.commands import (
    InferenceCommand,
    ModelCommand,
    RegisterModel,
    RequestCompletion,
    RequestEmbeddings,
    RetireModel,
    UpdateModel,
)
from events.inference.events import CompletionAccepted, EmbeddingsAccepted
from workers import jobs
from workers.aggregate import DomainRuleError
from workers.decisions import RunStart, Verdict
from workers.inference.aggregates import Completion, Model, NotFoundError

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable

    from events.base import Command
    from events.inference.commands import ModelSpec
    from workers.decisions import Streams


@dataclass(frozen=True)
class InferenceDecider:
    max_wall_s: float
    context: str = InferenceCommand.CONTEXT

    @property
    def commands(self) -> frozenset[type[Command]]:
        return frozenset(_DECISIONS)

    def stream_ids(self, command: Command) -> list[uuid.UUID]:
        if isinstance(command, ModelCommand):
            return [model_aggregate_id(command.name)]
        assert isinstance(command, RequestCompletion | RequestEmbeddings)
        return [model_aggregate_id(command.model), run_aggregate_id(command.request_id)]

    def decide(self, command: Command, streams: Streams) -> Verdict:
        decision = _DECISIONS.get(type(command))
        if decision is None:
            raise TypeError(f"no decision for {type(command).__name__}")
        return decision(self, command, streams)

    def _register(self, command: RegisterModel, streams: Streams) -> Verdict:
        model = streams.get(model_aggregate_id(command.name), Model)
        model.register(command.name, command.spec)
        return Verdict(model.id, f"registered {command.name}")

    def _update(self, command: UpdateModel, streams: Streams) -> Verdict:
        model = streams.get(model_aggregate_id(command.name), Model)
        model.update(command.name, command.spec)
        return Verdict(model.id, f"updated {command.name}")

    def _retire(self, command: RetireModel, streams: Streams) -> Verdict:
        model = streams.get(model_aggregate_id(command.name), Model)
        model.retire(command.name)
        return Verdict(model.id, f"retired {command.name}")

    def _complete(self, command: RequestCompletion, streams: Streams) -> Verdict:
        start, run, command_id, spec = _accepting(
            command, streams, command.max_wall_s or self.max_wall_s
        )
        if spec is None:
            return Verdict(run.id, "accepted (redelivered)", run=start)
        max_tokens = command.max_tokens or spec.sampling.max_tokens
        run.record(
            CompletionAccepted(
                request_id=command.request_id,
                command_id=str(command_id),
                model=command.model,
                spec=spec,
                messages=command.messages,
                prompt=command.prompt,
                max_tokens=max_tokens,
                temperature=(
                    command.temperature
                    if command.temperature is not None
                    else spec.sampling.temperature
                ),
                top_p=command.top_p if command.top_p is not None else spec.sampling.top_p,
                seed=command.seed,
                stop=command.stop,
                response_format=command.response_format,
                user=command.user,
            )
        )
        return Verdict(run.id, "accepted", run=start)


def _accepting(
    command: RequestCompletion | RequestEmbeddings, streams: Streams, max_wall_s: float
) -> tuple[RunStart, Completion, uuid.UUID, ModelSpec | None]:
    """What accepting a run needs: its start, its aggregate, the command id, and the model's
    spec (None when this command's run was accepted already: a redelivery)."""
    command_id = jobs.current().command_id
    assert command_id is not None, "decided outside a batch"
    run = streams.get(run_aggregate_id(command.request_id), Completion)
    start = RunStart(run.id, max_wall_s=max_wall_s)
    if run.command_id is not None:
        if run.command_id != str(command_id):
            raise DomainRuleError(f"request_id {command.request_id!r} was already used")
        return start, run, command_id, None
    model = streams.get(model_aggregate_id(command.model), Model)
    if not model.active or model.spec is None:
        raise NotFoundError(f"no model {command.model!r}")
    return start, run, command_id, model.spec


def _embed(self: InferenceDecider, command: RequestEmbeddings, streams: Streams) -> Verdict:
    start, run, command_id, spec = _accepting(command, streams, self.max_wall_s)
    if spec is None:
        return Verdict(run.id, "accepted (redelivered)", run=start)
    run.record(
        EmbeddingsAccepted(
            request_id=command.request_id,
            command_id=str(command_id),
            model=command.model,
            spec=spec,
            input=command.input,
            user=command.user,
        )
    )
    return Verdict(run.id, "accepted", run=start)


_DECISIONS: dict[type[Command], Callable[[InferenceDecider, Any, Streams], Verdict]] = {
    RegisterModel: InferenceDecider._register,
    UpdateModel: InferenceDecider._update,
    RetireModel: InferenceDecider._retire,
    RequestCompletion: InferenceDecider._complete,
    RequestEmbeddings: _embed,
}
