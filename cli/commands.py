"""``uait commands cancel``: stop a command (a waiting one never runs, a running one stops at
its next check; a generation stops between two tokens)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

import typer

from cli.console import console, load_settings

app = typer.Typer(no_args_is_help=True, help="Commands in flight.")


@app.command("cancel")
def cancel(command_id: Annotated[str, typer.Argument(help="the command's id")]) -> None:
    """Ask every worker to cancel a command (through Redis)."""
    from redis.asyncio import Redis

    from infra.cancel import request_cancel

    try:
        cid = uuid.UUID(command_id)
    except ValueError:
        console.print(f"[red]not a command id:[/red] {command_id}")
        raise typer.Exit(2) from None
    settings = load_settings()
    if not settings.redis_url:
        console.print("[red]cancellation needs Redis:[/red] UAIT_REDIS_URL is empty")
        raise typer.Exit(2)

    async def send() -> None:
        redis = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=2)
        try:
            await request_cancel(redis, cid, ttl_s=settings.cancel_ttl_s)
        finally:
            await redis.aclose()

    try:
        asyncio.run(send())
    except Exception as exc:
        console.print(f"[red]Redis unavailable:[/red] {exc}")
        raise typer.Exit(3) from None
    typer.echo(f"cancelling {cid}")
