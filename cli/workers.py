"""``uait workers pause|resume|status``: hold consumption of a context without a rebalance."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cli.console import console, contexts
from infra.control import paused_contexts, set_paused
from infra.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Pause and resume command consumption.")

ContextOption = Annotated[list[str] | None, typer.Option("--context", help="default: all")]


def _run(ctx: typer.Context, wanted: list[str] | None, paused: bool | None) -> set[str]:
    settings = Settings()
    if not settings.redis_url:
        console.print("[red]UAIT_REDIS_URL is not set[/red]: pausing is shared through Redis")
        raise typer.Exit(2)
    names = contexts(ctx).names
    chosen = wanted or list(names)
    unknown = set(chosen) - set(names)
    if unknown:
        console.print(f"[red]unknown context(s):[/red] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)

    async def act() -> set[str]:
        redis = Redis.from_url(settings.redis_url, socket_timeout=2, socket_connect_timeout=2)
        try:
            if paused is not None:
                await set_paused(redis, chosen, paused)
            return await paused_contexts(redis)
        finally:
            await redis.aclose()

    try:
        return asyncio.run(act())
    except RedisError as exc:
        console.print(f"[red]Redis unavailable:[/red] {exc}")
        raise typer.Exit(3) from None


@app.command()
def pause(ctx: typer.Context, context: ContextOption = None) -> None:
    """Workers stop fetching these contexts (they stay in their group) within a second."""
    now = _run(ctx, context, True)
    typer.echo(f"paused: {', '.join(sorted(now)) or 'none'}")


@app.command()
def resume(ctx: typer.Context, context: ContextOption = None) -> None:
    """Workers fetch these contexts again, from where they were."""
    now = _run(ctx, context, False)
    typer.echo(f"paused: {', '.join(sorted(now)) or 'none'}")


@app.command()
def status(ctx: typer.Context) -> None:
    """Which contexts are paused."""
    now = _run(ctx, None, None)
    for context in contexts(ctx).names:
        typer.echo(f"{context}: {'paused' if context in now else 'running'}")
