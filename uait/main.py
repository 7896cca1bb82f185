"""The ``uait`` command: every command group, the processes and ``uait dev``, with the context
registry handed to each command (Typer's ``ctx.obj``)."""

from __future__ import annotations

import typer

from cli import breakers, commands, dlq, projections, publish, replay, store, topics, workers
from cli.security import keys_app, secrets_app
from contexts import REGISTRY
from uait import asyncapi, bench, dev, processes

app = typer.Typer(no_args_is_help=True, help="Universal AI Tools: event-sourced AI backend.")


@app.callback()
def _root(ctx: typer.Context) -> None:
    ctx.obj = REGISTRY


app.command()(publish.migrate)
app.command()(publish.publish)
app.command()(replay.replay)
app.command()(processes.worker)
app.command()(processes.relay)
app.command()(processes.ingress)
app.command()(dev.dev)
app.command()(asyncapi.asyncapi)
projections.app.command("run")(processes.projections_run)
for name, group in (
    ("topics", topics.app),
    ("projections", projections.app),
    ("bench", bench.app),
    ("store", store.app),
    ("breakers", breakers.app),
    ("workers", workers.app),
    ("dlq", dlq.app),
    ("commands", commands.app),
    ("keys", keys_app),
    ("secrets", secrets_app),
    *((name, group) for c in REGISTRY.contexts for name, group in c.cli),
):
    app.add_typer(group, name=name)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
