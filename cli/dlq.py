"""``uait dlq list|show|redrive|purge``: the dead letters, through their PostgreSQL index."""

from __future__ import annotations

import asyncio
import uuid  # noqa: TC003  (Typer reads the annotations at run time)
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from cli.console import console, contexts, load_settings, setup_logging

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from infra.dead_letters import DeadLetters
    from infra.publisher import CommandPublisher

app = typer.Typer(no_args_is_help=True, help="Dead letters: list, show, redrive, purge.")

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


def _run(
    ctx: typer.Context,
    job: Callable[[DeadLetters, CommandPublisher | None], Awaitable[Any]],
    *,
    kafka: bool,
) -> Any:
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    from infra.dead_letters import DeadLetters
    from infra.publisher import BrokerUnavailableError, CommandPublisher

    setup_logging("WARNING")
    settings = load_settings()
    names = contexts(ctx).names
    if not settings.database_url or (kafka and not settings.kafka_bootstrap):
        needed = "UAIT_DATABASE_URL and UAIT_KAFKA_BOOTSTRAP" if kafka else "UAIT_DATABASE_URL"
        console.print(f"[red]{needed} not set[/red] (`uait dev` prints them)")
        raise typer.Exit(EXIT_USAGE)

    async def main() -> Any:
        async with AsyncConnectionPool(
            settings.database_url, open=False, min_size=1, max_size=2
        ) as pool:
            if not kafka:
                return await job(DeadLetters(pool, names), None)
            async with CommandPublisher(
                settings.kafka_bootstrap, max_message_bytes=settings.kafka_max_message_bytes
            ) as publisher:
                return await job(DeadLetters(pool, names), publisher)

    try:
        return asyncio.run(main())
    except (psycopg.OperationalError, BrokerUnavailableError) as exc:
        console.print(f"[red]unavailable:[/red] {exc}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else ""


TopicOption = Annotated[
    str | None, typer.Option("--topic", help="original topic (or its .dlq); default: all")
]


@app.command("list")
def list_dead_letters(
    ctx: typer.Context,
    topic: TopicOption = None,
    since: Annotated[
        str | None, typer.Option(help="dead-lettered since: ISO time or an age (12h, 7d)")
    ] = None,
    include_redriven: Annotated[
        bool, typer.Option("--include-redriven", help="also those already redriven")
    ] = False,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 100,
) -> None:
    """Dead letters, newest first."""
    from infra.dead_letters import parse_since

    try:
        after = parse_since(since) if since else None
    except ValueError as exc:
        console.print(f"[red]--since:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from None

    async def job(dlq: DeadLetters, _: object) -> list[dict[str, Any]]:
        return await dlq.find(
            topic=topic, since=after, include_redriven=include_redriven, limit=limit
        )

    rows: list[dict[str, Any]] = _run(ctx, job, kafka=False)
    if not rows:
        console.print("no dead letters")
        return
    table = Table(
        "id", "command", "type", "topic", "error", "attempts", "dead-lettered", "redriven"
    )
    for r in rows:
        table.add_row(
            str(r["id"]),
            str(r["command_id"]),
            r["command_type"],
            f"{r['topic']}[{r['kafka_partition']}]@{r['kafka_offset']}",
            f"{r['error_type']}: {r['error_message']}"[:80],
            str(r["attempts"]),
            _when(r["dead_lettered_at"]),
            _when(r["redriven_at"]),
        )
    Console(width=220).print(table)


@app.command("show")
def show_dead_letter(
    ctx: typer.Context, dead_letter_id: Annotated[uuid.UUID, typer.Argument(metavar="ID")]
) -> None:
    """One dead letter as JSON: headers, error, traceback and the record itself."""
    from infra.dead_letters import DeadLetterNotFoundError

    async def job(dlq: DeadLetters, _: object) -> dict[str, Any] | None:
        try:
            return await dlq.get(dead_letter_id)
        except DeadLetterNotFoundError:
            return None

    row = _run(ctx, job, kafka=False)
    if row is None:
        console.print(f"[red]no dead letter {dead_letter_id}[/red] (see `uait dlq list`)")
        raise typer.Exit(EXIT_REFUSED)
    typer.echo(orjson.dumps(row, option=orjson.OPT_INDENT_2, default=str).decode())


@app.command("redrive")
def redrive(
    ctx: typer.Context,
    ids: Annotated[
        list[uuid.UUID] | None, typer.Option("--id", help="a dead letter to redrive (repeatable)")
    ] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="every open dead letter (of --topic)")
    ] = False,
    topic: TopicOption = None,
) -> None:
    """Put dead letters back onto their original topic, once each, with fresh attempts."""
    from infra.dead_letters import DeadLetterNotFoundError, RedriveRefusedError

    if bool(ids) == all_:
        console.print("[red]give --id ID (repeatable) or --all[/red] (with --topic to narrow it)")
        raise typer.Exit(EXIT_USAGE)

    async def job(dlq: DeadLetters, publisher: CommandPublisher | None) -> dict[str, Any]:
        assert publisher is not None
        done: list[uuid.UUID] = []
        refused: dict[uuid.UUID, str] = {}
        if ids:
            for one in ids:
                try:
                    await dlq.redrive(one, publisher)
                    done.append(one)
                except (RedriveRefusedError, DeadLetterNotFoundError) as exc:
                    refused[one] = str(exc)
            return {"done": done, "refused": refused}
        with Progress(console=console, transient=True) as progress:
            total = len(await dlq.find(topic=topic, limit=1_000_000))
            task = progress.add_task("redriving", total=total)
            done, refused = await dlq.redrive_many(
                publisher, topic=topic, on_each=lambda _id, _err: progress.advance(task)
            )
        return {"done": done, "refused": refused}

    result = _run(ctx, job, kafka=True)
    for one in result["done"]:
        typer.echo(f"redriven {one}")
    for one, why in result["refused"].items():
        console.print(f"[yellow]refused {one}:[/yellow] {why}")
    typer.echo(f"{len(result['done'])} redriven, {len(result['refused'])} refused")
    if result["refused"] and not result["done"]:
        raise typer.Exit(EXIT_REFUSED)


@app.command("purge")
def purge(
    ctx: typer.Context,
    older_than: Annotated[
        str, typer.Option("--older-than", help="dead-lettered longer ago than: 12h, 7d, 2w")
    ],
) -> None:
    """Delete index rows older than an age (the topic's retention removes its records)."""
    from infra.dead_letters import parse_age

    try:
        age = parse_age(older_than)
    except ValueError as exc:
        console.print(f"[red]--older-than:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from None

    async def job(dlq: DeadLetters, _: object) -> int:
        return await dlq.purge(age)

    typer.echo(f"purged {_run(ctx, job, kafka=False)} dead letter(s)")
