"""What a context plugs into the worker: its name and its decision logic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from infra.settings import Settings
    from workers.decisions import Decider
    from workers.runs import RunHandler


class WorkerContext(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def decider(self) -> DeciderFactory: ...

    @property
    def runs(self) -> RunHandlerFactory | None:
        """Its long-running commands' execution (None: it has none)."""
        ...


class DeciderFactory(Protocol):
    def __call__(self, settings: Settings) -> Decider: ...


class RunHandlerFactory(Protocol):
    def __call__(self, settings: Settings) -> RunHandler: ...
