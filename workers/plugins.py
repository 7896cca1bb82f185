"""What a context plugs into the worker: its name and its decision logic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from infra.settings import Settings
    from workers.decisions import Decider


class WorkerContext(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def decider(self) -> DeciderFactory: ...


class DeciderFactory(Protocol):
    def __call__(self, settings: Settings) -> Decider: ...
