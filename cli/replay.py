"""``uait replay``: stored events re-published, in store order, to a topic of your choice."""

from __future__ import annotations

import signal
from datetime import datetime  # noqa: TC003  (Typer reads the annotations at run time)
from typing import Annotated

import typer

from cli.console import console, load_settings, progress_bar, setup_logging
from cli.store import open_store


def replay(
    ctx: typer.Context,
    to_topic: Annotated[str, typer.Option(help="Kafka topic to publish to")],
    context: Annotated[str | None, typer.Option(help="default: the first context")] = None,
    from_position: Annotated[int | None, typer.Option(min=1, help="first position")] = None,
    from_time: Annotated[datetime | None, typer.Option(help="committed at or after (ISO)")] = None,
    to_position: Annotated[int | None, typer.Option(min=1, help="stop before")] = None,
    to_time: Annotated[datetime | None, typer.Option(help="committed before (ISO)")] = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="only these")] = None,
) -> None:
    """Re-publish stored events, in store order, to a topic for an outside consumer."""
    from events.base import known_types
    from projections.relay import BlockingProducer
    from projections.replay import replay as run
    from projections.replay import window

    setup_logging("WARNING", fmt="text")
    unknown = set(event_type or []) - set(known_types())
    if unknown:
        console.print(f"[red]unknown event type(s):[/red] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    for t in (from_time, to_time):
        if t is not None and t.tzinfo is None:
            console.print("[red]times need a time zone, e.g. 2026-11-25T10:00:00Z[/red]")
            raise typer.Exit(2)
    settings = load_settings()
    store = open_store(ctx, settings, context)
    stopped = False

    def on_interrupt(*_: object) -> None:
        nonlocal stopped
        stopped = True

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        selected = window(
            store,
            from_position=from_position,
            from_time=from_time,
            to_position=to_position,
            to_time=to_time,
        )
        producer = BlockingProducer(settings.kafka_bootstrap, timeout_s=30)
        try:
            progress, task = progress_bar("replay", selected.size)
            with progress:
                published, position = run(
                    store,
                    producer,
                    to_topic,
                    selected,
                    types=event_type or (),
                    progress=lambda read, _sent: progress.advance(task, read),
                    should_stop=lambda: stopped,
                )
        finally:
            producer.close()
    finally:
        signal.signal(signal.SIGINT, previous)
        store.factory.close()
    if stopped and position < selected.until:
        console.print(f"stopped: resume with --from-position {position + 1}")
        raise typer.Exit(130)
    console.print(f"published {published} events (positions {selected.after + 1}..{position})")
