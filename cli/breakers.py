"""``uait breakers list|open|close|reset``: see and steer the circuit breakers shared in Redis."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cli.console import console, load_settings, setup_logging

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from redis.asyncio import Redis

    from infra.breakers import BreakerRegistry, BreakerStatus

app = typer.Typer(no_args_is_help=True, help="Circuit breakers of external calls (in Redis).")

EXIT_UNKNOWN = 1
EXIT_SETTINGS = 2
EXIT_REDIS = 3


def _redis_url() -> str:

    setup_logging()
    settings = load_settings()
    if not settings.redis_url:
        console.print(
            "[red]UAIT_REDIS_URL is empty:[/red] the breakers live in Redis; set it to the Redis "
            "the services use (`uait dev` prints it)"
        )
        raise typer.Exit(EXIT_SETTINGS)
    return settings.redis_url


def _run(job: Callable[[BreakerRegistry], Awaitable[Any]]) -> Any:
    from redis.asyncio import Redis
    from redis.exceptions import RedisError

    from infra.breakers import BreakerRegistry

    url = _redis_url()

    async def main() -> Any:
        client: Redis = Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return await job(BreakerRegistry(client))
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except RedisError as exc:
        console.print(f"[red]Redis unavailable:[/red] {exc}")
        raise typer.Exit(EXIT_REDIS) from None


def _table(statuses: list[BreakerStatus]) -> Table:
    table = Table(
        "breaker", "state", "calls", "failed %", "slow %", "probes", "opened at", "half-open at"
    )
    for s in statuses:
        table.add_row(
            s.name,
            s.state.value,
            str(s.calls),
            f"{s.failure_rate:g}",
            f"{s.slow_call_rate:g}",
            str(s.probes_in_flight),
            s.opened_at.isoformat(timespec="seconds") if s.opened_at else "",
            s.half_open_at.isoformat(timespec="seconds") if s.half_open_at else "",
        )
    return table


@app.command("list")
def list_breakers() -> None:
    """Every breaker with its state and window."""

    async def job(registry: BreakerRegistry) -> list[BreakerStatus]:
        return await registry.statuses()

    statuses: list[BreakerStatus] = _run(job)
    if not statuses:
        console.print("no breakers yet (a breaker appears on its first call)")
        return
    Console(width=200).print(_table(statuses))


def _steer(name: str, action: str, reason: str) -> None:
    async def job(registry: BreakerRegistry) -> BreakerStatus | None:
        if not await registry.exists(name):
            return None
        breaker = await registry.get(name)
        if action == "open":
            return await breaker.force_open(reason)
        if action == "close":
            return await breaker.force_close(reason)
        return await breaker.reset(reason)

    status: BreakerStatus | None = _run(job)
    if status is None:
        console.print(f"[red]no breaker named {name!r}[/red] (see `uait breakers list`)")
        raise typer.Exit(EXIT_UNKNOWN)
    Console(width=200).print(_table([status]))


Name = Annotated[str, typer.Argument(help="the breaker's name, as `uait breakers list` shows it")]
Reason = Annotated[str, typer.Option(help="why, for the audit log")]


@app.command("open")
def open_breaker(name: Name, reason: Reason = "forced open from the command line") -> None:
    """Force a breaker open: every call fails fast until `reset`."""
    _steer(name, "open", reason)


@app.command("close")
def close_breaker(name: Name, reason: Reason = "forced closed from the command line") -> None:
    """Force a breaker closed: every call goes through until `reset`."""
    _steer(name, "close", reason)


@app.command("reset")
def reset_breaker(name: Name, reason: Reason = "reset from the command line") -> None:
    """Back to closed with an empty window (ends a forced state)."""
    _steer(name, "reset", reason)
