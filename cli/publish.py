"""``uait publish``: one command straight onto its context's topic; ``uait migrate``."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from pydantic import ValidationError

from cli.commanding import publish_command
from cli.console import console, known_context, load_settings, setup_logging
from events.base import Command, UnknownMessageTypeError, load
from events.envelope import describe_validation_error


def migrate() -> None:
    """Apply the SQL migrations (also done at every start)."""
    from infra.migrate import migrate as apply
    from infra.startup import require_endpoints

    setup_logging()
    settings = load_settings()
    require_endpoints(settings)
    applied = apply(settings.database_url)
    console.print(f"applied {len(applied)} migration(s)")


def publish(
    ctx: typer.Context,
    context: Annotated[str, typer.Argument(help="e.g. knowledge")],
    command_json: Annotated[
        str, typer.Argument(help='{"type": "IngestDocument", "payload": {...}}, or - for stdin')
    ],
    actor: Annotated[str, typer.Option(help="who sends it")] = "cli",
) -> None:
    """Publish one command straight to Kafka, in the same envelope the ingress uses."""
    from infra.publisher import BrokerUnavailableError

    settings = load_settings()
    known_context(ctx, context)
    raw = sys.stdin.read() if command_json == "-" else command_json
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or "type" not in data or "payload" not in data:
            raise ValueError('expected an object {"type": ..., "payload": {...}}')
        message = load(data["type"], int(data.get("version", 1)), data["payload"])
    except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
        if isinstance(exc, ValidationError):
            exc = ValueError(describe_validation_error(exc))
        console.print(f"[red]invalid command:[/red] {exc}")
        raise typer.Exit(2) from None
    except UnknownMessageTypeError as exc:
        console.print(f"[red]invalid command:[/red] {exc}")
        raise typer.Exit(2) from None
    if not isinstance(message, Command) or context != message.CONTEXT:
        console.print(f"[red]{data['type']} is not a command of context {context!r}[/red]")
        raise typer.Exit(2)

    try:
        command_id = publish_command(settings, message, actor)
    except BrokerUnavailableError as exc:
        console.print(f"[red]broker unavailable:[/red] {exc}")
        raise typer.Exit(3) from None
    typer.echo(command_id)
