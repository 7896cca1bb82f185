"""``uait projections list|status|pause|resume|retry|rebuild|rollback``: the read models."""

from __future__ import annotations

import signal
import time
from datetime import datetime  # noqa: TC003  (Typer reads the annotations at run time)
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from cli.console import console, contexts, load_settings, progress_bar, setup_logging

app = typer.Typer(no_args_is_help=True, help="Read-model projections.")


@app.command("list")
def projections_list(ctx: typer.Context) -> None:
    """Every projection: context, code version, tables, the event types it reads."""
    table = Table("projection", "context", "version", "tables", "event types")
    for p in contexts(ctx).projections():
        table.add_row(
            p.name, p.context, str(p.version), ", ".join(p.tables), ", ".join(sorted(p.topics))
        )
    Console().print(table)


@app.command("status")
def projections_status(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(help="seconds between two samples")] = 1.0,
) -> None:
    """Position, head, lag in events and seconds, state and events/s of every projection."""
    from infra.startup import require_endpoints
    from projections.control import read_state
    from projections.process import projection_runners

    settings = load_settings()
    require_endpoints(settings)
    runners, factories = projection_runners(settings, contexts(ctx).projections(), setup=False)
    try:
        first = {r.projection.name: r.position() for r in runners}
        time.sleep(interval)
        table = Table(
            "projection", "state", "version", "position", "head", "lag", "lag (s)", "events/s"
        )
        for r in runners:
            name = r.projection.name
            head = r.recorder.max_notification_id() or 0
            pos = r.position()
            state = read_state(r.datastore, name)
            lag_s = _age_of_next_event(r, pos) if head > pos else 0.0
            label: str = state.state
            if state.state == "failed":
                label = (
                    f"failed at {state.failed_position} ({state.failed_event_type}): {state.error}"
                )
            elif state.rebuild_schema:
                label += " (rebuild under way)"
            table.add_row(
                name,
                label,
                str(state.live_version or r.projection.version),
                str(pos),
                str(head),
                str(head - pos),
                f"{lag_s:.1f}",
                f"{(pos - first[name]) / interval:,.0f}",
            )
        Console().print(table)
    finally:
        for f in factories:
            f.close()


def _age_of_next_event(runner: Any, position: int) -> float:
    """Seconds since the oldest event the projection has not applied was recorded."""
    from datetime import UTC, datetime

    notes = runner.recorder.select_notifications(start=position, limit=1, inclusive_of_start=False)
    if not notes:
        return 0.0
    at = datetime.fromisoformat(orjson.loads(notes[0].state)["at"])
    return max((datetime.now(UTC) - at).total_seconds(), 0.0)


def _one_runner(ctx: typer.Context, name: str, *, setup: bool = False) -> tuple[Any, list[Any]]:
    from infra.migrate import migrate as apply
    from infra.startup import require_endpoints
    from projections.process import projection_runners

    settings = load_settings()
    require_endpoints(settings)
    apply(settings.database_url)
    runners, factories = projection_runners(
        settings, contexts(ctx).projections(), names=[name], setup=setup
    )
    if not runners:
        for f in factories:
            f.close()
        console.print(f"[red]no projection {name!r}[/red] (see `uait projections list`)")
        raise typer.Exit(2)
    return runners[0], factories


def _set_projection_state(ctx: typer.Context, name: str, state: str) -> None:
    from projections.control import set_state

    runner, factories = _one_runner(ctx, name)
    try:
        set_state(runner.datastore, name, state)  # type: ignore[arg-type]
    finally:
        for f in factories:
            f.close()
    console.print(f"{name}: {state}")


@app.command("pause")
def projections_pause(ctx: typer.Context, name: str) -> None:
    """Hold a projection where it is (its runner stays connected)."""
    _set_projection_state(ctx, name, "paused")


@app.command("resume")
def projections_resume(ctx: typer.Context, name: str) -> None:
    """Let a paused projection follow the store again."""
    _set_projection_state(ctx, name, "running")


@app.command("retry")
def projections_retry(ctx: typer.Context, name: str) -> None:
    """Retry a failed projection from the event it failed on (after fixing the cause)."""
    _set_projection_state(ctx, name, "running")


@app.command("rebuild")
def projections_rebuild(
    ctx: typer.Context,
    name: str,
    from_position: Annotated[
        int, typer.Option(min=0, help="replay the events after this position")
    ] = 0,
    from_time: Annotated[
        datetime | None,
        typer.Option(help="replay the events committed at or after this time (ISO, with zone)"),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 10_000,
) -> None:
    """Blue/green rebuild: new tables built aside while the live ones serve, then one swap."""
    from projections.rebuild import Rebuilder
    from projections.replay import first_position_since

    setup_logging("WARNING", fmt="text")
    if from_time is not None and from_time.tzinfo is None:
        console.print("[red]times need a time zone, e.g. 2026-11-25T10:00:00Z[/red]")
        raise typer.Exit(2)
    runner, factories = _one_runner(ctx, name, setup=True)
    rebuilder = Rebuilder(
        runner.projection, runner.recorder, runner.tracking, batch_size=batch_size
    )
    if from_time is not None:
        # The commit-time index: events committed at or after the time, exactly.
        first = first_position_since(runner.datastore, runner.projection.context, from_time)
        from_position = max(from_position, first - 1 if first is not None else rebuilder.head())
    interrupted = False

    def on_interrupt(*_: object) -> None:
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        progress, task = progress_bar("rebuild", max(rebuilder.head() - from_position, 0))
        with progress:
            result = rebuilder.rebuild(
                from_position=from_position,
                progress=lambda k: progress.advance(task, k),
                should_stop=lambda: interrupted,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
        for f in factories:
            f.close()
    if result is None:
        console.print("interrupted: the shadow tables are consistent; run it again to resume")
        raise typer.Exit(130)
    console.print(
        f"{name}: {result.events} events in {result.seconds:.1f} s ({result.rate:,.0f}/s); "
        f"live at position {result.position}; old tables kept in {result.retired_schema} "
        "(`uait projections rollback` returns to them)"
    )


@app.command("rollback")
def projections_rollback(ctx: typer.Context, name: str) -> None:
    """Return to the tables the last rebuild replaced (caught up to the head first)."""
    from projections.rebuild import NothingToRollBackError, Rebuilder

    runner, factories = _one_runner(ctx, name)
    try:
        position = Rebuilder(runner.projection, runner.recorder, runner.tracking).rollback()
    except NothingToRollBackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        for f in factories:
            f.close()
    console.print(f"{name}: back on the previous tables, at position {position}")
