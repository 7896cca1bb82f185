"""What every command shares: the console, settings and logging, progress bars, and the
context registry (handed to each command by the root as Typer's ``ctx.obj``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, cast

import typer
from pydantic import ValidationError
from rich.console import Console

from events.envelope import describe_validation_error
from infra.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.progress import Progress, TaskID

    from projections.base import Projection

console = Console(stderr=True)


class CliContexts(Protocol):
    """The context registry as the command line sees it."""

    @property
    def names(self) -> tuple[str, ...]: ...

    def projections(self) -> Sequence[Projection]: ...


def contexts(ctx: typer.Context) -> CliContexts:
    """The registry the root command put on the click context."""
    found = ctx.find_root().obj
    if found is None:
        raise RuntimeError("no context registry: run commands through uait.main")
    return cast("CliContexts", found)


def known_context(ctx: typer.Context, name: str) -> str:
    """``name`` if a context of that name is registered; otherwise a CLI error (exit 2)."""
    if name not in contexts(ctx).names:
        console.print(
            f"[red]unknown context {name!r}[/red] (known: {', '.join(contexts(ctx).names)})"
        )
        raise typer.Exit(2)
    return name


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        console.print(f"[red]bad settings:[/red] {describe_validation_error(exc)}")
        raise typer.Exit(2) from None


def setup_logging(level: str = "INFO", *, service: str | None = None, fmt: str = "json") -> None:
    """JSON lines by default (``UAIT_LOG_FORMAT=text`` for humans); tracing for services."""
    from telemetry.logs import setup_logging as setup

    chosen = os.environ.get("UAIT_LOG_FORMAT", fmt)
    setup("text" if chosen == "text" else "json", os.environ.get("UAIT_LOG_LEVEL", level))
    if service is not None:
        from telemetry.tracing import setup_tracing

        setup_tracing(service)


def progress_bar(label: str, total: int | None, unit: str = "events") -> tuple[Progress, TaskID]:
    """A rich progress bar with a rate and an ETA, on the console (stderr)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed or 0:,.0f} {unit}/s")

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeRemainingColumn(),
        console=console,
    )
    return progress, progress.add_task(label, total=total)
