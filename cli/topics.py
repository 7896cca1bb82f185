"""``uait topics create|list``: the Kafka topics of every context, with their partitions."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from cli.console import console, contexts, load_settings, setup_logging

app = typer.Typer(no_args_is_help=True, help="Kafka topics.")


@app.command("create")
def topics_create(ctx: typer.Context) -> None:
    """Create the topics with their partition counts (also done at every start)."""
    from infra.topics import ensure_topics, topic_specs

    setup_logging()
    settings = load_settings()
    created = asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap,
            topic_specs(settings, contexts(ctx).names),
            replication_factor=settings.replication_factor,
        )
    )
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


@app.command("list")
def topics_list(ctx: typer.Context) -> None:
    """Show each topic and its partition count."""
    from infra.topics import describe_topics, topic_specs

    settings = load_settings()
    specs = topic_specs(settings, contexts(ctx).names)
    found = asyncio.run(describe_topics(settings.kafka_bootstrap, [s.name for s in specs]))
    table = Table("topic", "partitions", "wanted")
    for spec in specs:
        table.add_row(spec.name, str(found.get(spec.name, "missing")), str(spec.partitions))
    Console().print(table)
