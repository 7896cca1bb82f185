"""``uait store export|import``: a context's event store to and from compressed JSON lines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from cli.console import console, contexts, known_context, load_settings, progress_bar, setup_logging

if TYPE_CHECKING:
    from infra.eventstore import EventStore
    from infra.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Event store backup and restore.")


def open_store(ctx: typer.Context, settings: Settings, context: str | None) -> EventStore:
    """``context``'s event store (the first context's when None; migrated first); a CLI error
    for an unknown context."""
    from infra.databases import eventsourcing_env
    from infra.eventstore import EventStore, open_factory
    from infra.migrate import migrate as apply
    from infra.startup import require_endpoints

    require_endpoints(settings)
    context = known_context(ctx, context or contexts(ctx).names[0])
    apply(settings.database_url)
    return EventStore(context, open_factory(context, eventsourcing_env(settings.database_url)))


@app.command("export")
def store_export(
    ctx: typer.Context,
    output: Annotated[str, typer.Argument(help="file to write (.jsonl.gz)")],
    context: Annotated[str | None, typer.Option(help="default: the first context")] = None,
    from_position: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Stream the event store to compressed JSON lines with a checksum."""
    from infra.backup import export_store

    setup_logging("WARNING", fmt="text")
    store = open_store(ctx, load_settings(), context)
    try:
        progress, task = progress_bar("export", max(store.head() - from_position, 0))
        with progress, open(output, "wb") as out:
            n = export_store(
                store,
                out,
                from_position=from_position,
                progress=lambda k: progress.advance(task, k),
            )
    finally:
        store.factory.close()
    console.print(f"exported {n} events to {output}")


@app.command("import")
def store_import(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(help="a file written by `uait store export`")],
    context: Annotated[str | None, typer.Option(help="default: the first context")] = None,
) -> None:
    """Load a backup into an empty event store (same positions), checking its checksum."""
    from infra.backup import BackupError, import_store, read_header

    setup_logging("WARNING", fmt="text")
    store = open_store(ctx, load_settings(), context)
    try:
        header = read_header(path)
        progress, task = progress_bar("import", int(header.get("head", 0)) or None)
        with progress:
            n = import_store(store, path, progress=lambda k: progress.advance(task, k))
    except (BackupError, OSError) as exc:
        console.print(f"[red]import refused:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        store.factory.close()
    console.print(f"imported {n} events; rebuild the projections with `uait projections run`")
