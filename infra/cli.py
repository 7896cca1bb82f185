"""The ``uait`` command line."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime  # noqa: TC003  (Typer reads the annotations at run time)
from typing import Annotated, Any

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

import events  # noqa: F401  (registers every message type)
from events.base import Command, UnknownMessageTypeError, load
from events.envelope import describe_validation_error
from events.topics import CONTEXTS
from infra.commands.breakers import app as breakers_app
from infra.commands.dlq import app as dlq_app
from infra.commands.identity import keys_app, secrets_app, users_app
from infra.commands.workers import app as workers_app
from infra.settings import Settings

app = typer.Typer(no_args_is_help=True, help="Universal AI Tools: event-sourced AI backend.")
topics_app = typer.Typer(no_args_is_help=True, help="Kafka topics.")
projections_app = typer.Typer(no_args_is_help=True, help="Read-model projections.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks.")
store_app = typer.Typer(no_args_is_help=True, help="Event store backup and restore.")
app.add_typer(topics_app, name="topics")
app.add_typer(projections_app, name="projections")
app.add_typer(bench_app, name="bench")
app.add_typer(store_app, name="store")
app.add_typer(breakers_app, name="breakers")
app.add_typer(workers_app, name="workers")
app.add_typer(dlq_app, name="dlq")
app.add_typer(users_app, name="users")
app.add_typer(keys_app, name="keys")
app.add_typer(secrets_app, name="secrets")

console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        console.print(f"[red]bad settings:[/red] {describe_validation_error(exc)}")
        raise typer.Exit(2) from None


def _logging(level: str = "INFO", *, service: str | None = None, fmt: str = "json") -> None:
    """JSON lines by default (``UAIT_LOG_FORMAT=text`` for humans); tracing for services."""
    from telemetry.logs import setup_logging

    chosen = os.environ.get("UAIT_LOG_FORMAT", fmt)
    setup_logging("text" if chosen == "text" else "json", os.environ.get("UAIT_LOG_LEVEL", level))
    if service is not None:
        from telemetry.tracing import setup_tracing

        setup_tracing(service)


def _serve_ops(settings: Settings, port: int, service: str, checks: dict[str, Any]) -> None:
    """This process's /metrics, /livez, /readyz and /health (each process has its own port)."""
    from infra import ops

    ops.start(settings, port, service, {**ops.common_checks(settings), **checks})


def _ready(settings: Settings, *, need_kafka: bool = True) -> Settings:
    from infra.runtime import prepare, require_endpoints

    require_endpoints(settings)
    prepare(settings, need_kafka=need_kafka)
    return settings


@app.command()
def migrate() -> None:
    """Apply the SQL migrations (also done at every start)."""
    from infra.migrate import migrate as apply
    from infra.runtime import require_endpoints

    _logging()
    settings = _settings()
    require_endpoints(settings)
    applied = apply(settings.database_url)
    console.print(f"applied {len(applied)} migration(s)")


@topics_app.command("create")
def topics_create() -> None:
    """Create the topics with their partition counts (also done at every start)."""
    from infra.topics import ensure_topics, topic_specs

    _logging()
    settings = _settings()
    created = asyncio.run(
        ensure_topics(
            settings.kafka_bootstrap,
            topic_specs(settings),
            replication_factor=settings.replication_factor,
        )
    )
    console.print(f"created: {', '.join(created) or 'nothing (all exist)'}")


@topics_app.command("list")
def topics_list() -> None:
    """Show each topic and its partition count."""
    from infra.topics import describe_topics, topic_specs

    settings = _settings()
    specs = topic_specs(settings)
    found = asyncio.run(describe_topics(settings.kafka_bootstrap, [s.name for s in specs]))
    table = Table("topic", "partitions", "wanted")
    for spec in specs:
        table.add_row(spec.name, str(found.get(spec.name, "missing")), str(spec.partitions))
    Console().print(table)


@app.command()
def worker(
    context: Annotated[
        list[str] | None, typer.Option(help="contexts to serve (default all)")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="max commands per transaction")] = None,
) -> None:
    """Consume commands, decide, and append to the event store."""
    from infra.stack import eventsourcing_env
    from workers.main import build_worker

    _logging(service="uait-worker")
    settings = _ready(_settings())
    unknown = set(context or []) - set(CONTEXTS)
    if unknown:
        console.print(f"[red]unknown context(s):[/red] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    from infra.ops import kafka_assignment

    w = build_worker(
        settings,
        kafka_bootstrap=settings.kafka_bootstrap,
        es_env=eventsourcing_env(settings.database_url),
        contexts=context,
        batch_size=batch_size,
    )
    _serve_ops(
        settings,
        settings.worker_metrics_port,
        "uait-worker",
        {"kafka": kafka_assignment(lambda: list(w.broker.subscribers))},
    )
    try:
        asyncio.run(w.app.run())
    finally:
        w.close()


@projections_app.command("run")
def projections_run(
    name: Annotated[list[str] | None, typer.Option(help="projections to run (default all)")] = None,
) -> None:
    """Follow the event store and keep the read models up to date."""
    from infra.runtime import run_projections

    _logging(service="uait-projections")
    settings = _ready(_settings(), need_kafka=False)
    from infra.ops import projections_lag

    _serve_ops(
        settings,
        settings.projections_metrics_port,
        "uait-projections",
        {"projections": projections_lag(settings.database_url)},
    )
    run_projections(settings, names=name)


@projections_app.command("list")
def projections_list() -> None:
    """Every projection: context, code version, tables, the event types it reads."""
    from projections.registry import all_projections

    table = Table("projection", "context", "version", "tables", "event types")
    for p in all_projections():
        table.add_row(
            p.name, p.context, str(p.version), ", ".join(p.tables), ", ".join(sorted(p.topics))
        )
    Console().print(table)


@projections_app.command("status")
def projections_status(
    interval: Annotated[float, typer.Option(help="seconds between two samples")] = 1.0,
) -> None:
    """Position, head, lag in events and seconds, state and events/s of every projection."""
    from infra.runtime import projection_runners, require_endpoints
    from projections.control import read_state

    settings = _settings()
    require_endpoints(settings)
    runners, factories = projection_runners(settings, setup=False)
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


def _one_runner(name: str, *, setup: bool = False) -> tuple[Any, list[Any]]:
    from infra.migrate import migrate as apply
    from infra.runtime import projection_runners, require_endpoints

    settings = _settings()
    require_endpoints(settings)
    apply(settings.database_url)
    runners, factories = projection_runners(settings, names=[name], setup=setup)
    if not runners:
        for f in factories:
            f.close()
        console.print(f"[red]no projection {name!r}[/red] (see `uait projections list`)")
        raise typer.Exit(2)
    return runners[0], factories


def _set_projection_state(name: str, state: str) -> None:
    from projections.control import set_state

    runner, factories = _one_runner(name)
    try:
        set_state(runner.datastore, name, state)  # type: ignore[arg-type]
    finally:
        for f in factories:
            f.close()
    console.print(f"{name}: {state}")


@projections_app.command("pause")
def projections_pause(name: str) -> None:
    """Hold a projection where it is (its runner stays connected)."""
    _set_projection_state(name, "paused")


@projections_app.command("resume")
def projections_resume(name: str) -> None:
    """Let a paused projection follow the store again."""
    _set_projection_state(name, "running")


@projections_app.command("retry")
def projections_retry(name: str) -> None:
    """Retry a failed projection from the event it failed on (after fixing the cause)."""
    _set_projection_state(name, "running")


@projections_app.command("rebuild")
def projections_rebuild(
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

    _logging("WARNING", fmt="text")
    if from_time is not None and from_time.tzinfo is None:
        console.print("[red]times need a time zone, e.g. 2026-11-25T10:00:00Z[/red]")
        raise typer.Exit(2)
    runner, factories = _one_runner(name, setup=True)
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
        progress, task = _progress("rebuild", max(rebuilder.head() - from_position, 0))
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


@projections_app.command("rollback")
def projections_rollback(name: str) -> None:
    """Return to the tables the last rebuild replaced (caught up to the head first)."""
    from projections.rebuild import NothingToRollBackError, Rebuilder

    runner, factories = _one_runner(name)
    try:
        position = Rebuilder(runner.projection, runner.recorder, runner.tracking).rollback()
    except NothingToRollBackError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    finally:
        for f in factories:
            f.close()
    console.print(f"{name}: back on the previous tables, at position {position}")


@app.command()
def relay() -> None:
    """Publish public stored events, in store order, to uait.events.<context>."""
    from infra.runtime import run_relay

    _logging(service="uait-relay")
    settings = _ready(_settings())
    _serve_ops(settings, settings.relay_metrics_port, "uait-relay", {})
    run_relay(settings)


@app.command()
def ingress(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from app.main import create_app

    _logging(service="uait-ingress")
    settings = _ready(_settings(), need_kafka=False)
    from infra.runtime import ensure_signing_key

    ensure_signing_key(settings)
    api = create_app(
        settings,
        database_url=settings.database_url,
        kafka_bootstrap=settings.kafka_bootstrap,
        tune_gc=True,
    )
    uvicorn.run(
        api,
        host=host or settings.http_host,
        port=port if port is not None else settings.http_port,
        log_level="warning",
        access_log=False,
        log_config=None,  # keep our JSON handler on the root logger
        # X-Forwarded-* are honoured only from UAIT_TRUSTED_PROXIES (app.clientip), never by
        # uvicorn's own default, which trusts any local client.
        proxy_headers=False,
    )


@app.command()
def publish(
    context: Annotated[str, typer.Argument(help="e.g. knowledge")],
    command_json: Annotated[
        str, typer.Argument(help='{"type": "IngestDocument", "payload": {...}}, or - for stdin')
    ],
    actor: Annotated[str, typer.Option(help="who sends it")] = "cli",
) -> None:
    """Publish one command straight to Kafka, in the same envelope the ingress uses."""
    from app.publisher import BrokerUnavailableError, CommandPublisher
    from infra.actors import operator_signer

    settings = _settings()
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

    async def send() -> str:
        async with CommandPublisher(
            settings.kafka_bootstrap,
            timeout_s=settings.publish_timeout_s,
            max_message_bytes=settings.kafka_max_message_bytes,
            signer=operator_signer(settings),
        ) as publisher:
            envelope = await publisher.publish(message, actor=actor)
            return str(envelope.message_id)

    try:
        command_id = asyncio.run(send())
    except BrokerUnavailableError as exc:
        console.print(f"[red]broker unavailable:[/red] {exc}")
        raise typer.Exit(3) from None
    typer.echo(command_id)


@app.command()
def dev(
    port: Annotated[int | None, typer.Option(help="HTTP port (default UAIT_HTTP_PORT)")] = None,
) -> None:
    """Embedded stack + ingress + workers + projections, in one command. Ctrl-C stops all."""
    from infra.secrets import dev_secrets, write_dev_env
    from infra.stack import EmbeddedStack

    _logging(fmt="text")
    settings = _settings()
    port = port if port is not None else settings.http_port
    with EmbeddedStack(settings) as endpoints:
        env = {
            "UAIT_LOG_FORMAT": "text",  # human-readable in dev, unless asked otherwise
            **os.environ,
            "UAIT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
            "UAIT_DATABASE_URL": endpoints.database_url,
            "UAIT_REDIS_URL": endpoints.redis_url,
            **dev_secrets(settings.data_dir),
        }
        os.environ.update(env)
        dev_env = write_dev_env(
            settings.data_dir, {k: v for k, v in env.items() if k.startswith("UAIT_")}
        )
        _ready(Settings())
        exe = [sys.executable, "-m", "infra.cli"]
        children = [
            subprocess.Popen([*exe, "worker"], env=env),
            subprocess.Popen([*exe, "projections", "run"], env=env),
            subprocess.Popen([*exe, "relay"], env=env),
            subprocess.Popen([*exe, "ingress", "--port", str(port)], env=env),
        ]
        console.print(
            f"\n[bold green]uait dev is up[/bold green]\n"
            f"  API       http://{settings.http_host}:{port}  (docs: /docs)\n"
            f"  Kafka     {endpoints.kafka_bootstrap}\n"
            f"  Postgres  {endpoints.database_url}\n"
            f"  Redis     {endpoints.redis_url}\n"
            "The first admin (every route but health needs a login or an API key):\n"
            f"  env $(cat {dev_env}) uait users create-admin --email you@example.com\n"
            "Ctrl-C stops everything.\n"
        )
        try:
            while all(c.poll() is None for c in children):
                time.sleep(0.5)
            console.print("[red]a process exited; stopping[/red]")
        except KeyboardInterrupt:
            console.print("stopping…")
        finally:
            for c in children:
                if c.poll() is None:
                    c.send_signal(signal.SIGTERM)
            for c in children:
                try:
                    c.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    c.kill()


def _open_store(settings: Settings, context: str):  # type: ignore[no-untyped-def]
    from infra.migrate import migrate as apply
    from infra.runtime import require_endpoints
    from infra.stack import eventsourcing_env
    from workers.eventstore import EventStore, open_factory

    require_endpoints(settings)
    if context not in CONTEXTS:
        console.print(f"[red]unknown context {context!r}[/red]")
        raise typer.Exit(2)
    apply(settings.database_url)
    return EventStore(context, open_factory(context, eventsourcing_env(settings.database_url)))


def _progress(label: str, total: int | None):  # type: ignore[no-untyped-def]
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        Task,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            return Text(f"{task.speed or 0:,.0f} events/s")

    progress = Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeRemainingColumn(),
        console=console,
    )
    return progress, progress.add_task(label, total=total)


@store_app.command("export")
def store_export(
    output: Annotated[str, typer.Argument(help="file to write (.jsonl.gz)")],
    context: Annotated[str, typer.Option()] = "knowledge",
    from_position: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Stream the event store to compressed JSON lines with a checksum."""
    from infra.backup import export_store

    _logging("WARNING", fmt="text")
    store = _open_store(_settings(), context)
    try:
        progress, task = _progress("export", max(store.head() - from_position, 0))
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


@store_app.command("import")
def store_import(
    path: Annotated[str, typer.Argument(help="a file written by `uait store export`")],
    context: Annotated[str, typer.Option()] = "knowledge",
) -> None:
    """Load a backup into an empty event store (same positions), checking its checksum."""
    from infra.backup import BackupError, import_store, read_header

    _logging("WARNING", fmt="text")
    store = _open_store(_settings(), context)
    try:
        header = read_header(path)
        progress, task = _progress("import", int(header.get("head", 0)) or None)
        with progress:
            n = import_store(store, path, progress=lambda k: progress.advance(task, k))
    except (BackupError, OSError) as exc:
        console.print(f"[red]import refused:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        store.factory.close()
    console.print(f"imported {n} events; rebuild the projections with `uait projections run`")


@app.command()
def replay(
    to_topic: Annotated[str, typer.Option(help="Kafka topic to publish to")],
    context: Annotated[str, typer.Option()] = "knowledge",
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

    _logging("WARNING", fmt="text")
    unknown = set(event_type or []) - set(known_types())
    if unknown:
        console.print(f"[red]unknown event type(s):[/red] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    for t in (from_time, to_time):
        if t is not None and t.tzinfo is None:
            console.print("[red]times need a time zone, e.g. 2026-11-25T10:00:00Z[/red]")
            raise typer.Exit(2)
    settings = _settings()
    store = _open_store(settings, context)
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
            progress, task = _progress("replay", selected.size)
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


@bench_app.command("pipeline")
def bench_pipeline(
    commands: Annotated[int, typer.Option(help="small documents to ingest")] = 100_000,
    baseline_commands: Annotated[
        int, typer.Option(help="commands for the batch-size-1 run")
    ] = 5_000,
    paced_rate: Annotated[int, typer.Option(help="commands/s of the latency run")] = 500,
    paced_seconds: Annotated[int, typer.Option(help="length of the latency run")] = 10,
) -> None:
    """Publish -> worker -> event store -> projection throughput, batched vs one per txn."""
    from bench.pipeline import main as run_bench

    _logging("WARNING")
    run_bench(
        commands=commands,
        baseline_commands=baseline_commands,
        paced_rate=paced_rate,
        paced_seconds=paced_seconds,
    )


@bench_app.command("retry")
def bench_retry(
    commands: Annotated[int, typer.Option(help="documents per round and path")] = 5000,
    rounds: Annotated[int, typer.Option(help="rounds of each path (medians)")] = 3,
) -> None:
    """Commands/s through the retry path (each failing once) against the normal path."""
    from bench.retry import main as run_bench

    _logging("WARNING", fmt="text")
    run_bench(commands=commands, rounds=rounds)


@bench_app.command("ingress")
def bench_ingress(
    seconds: Annotated[int, typer.Option(help="length of each wrk run")] = 10,
    rounds: Annotated[int, typer.Option(help="alternating rounds; medians are reported")] = 3,
    connections: Annotated[int, typer.Option(help="wrk connections")] = 32,
) -> None:
    """The authenticated, rate-limited, validated publish path against a bare endpoint."""
    from bench.ingress import main as run_bench

    _logging("WARNING", fmt="text")
    run_bench(seconds=seconds, rounds=rounds, connections=connections)


@bench_app.command("rebuild")
def bench_rebuild(
    count: Annotated[int, typer.Option("--events", help="events to generate")] = 1_000_000,
    sample: Annotated[int, typer.Option(help="events for the library's plain runner")] = 20_000,
    batch_size: Annotated[int, typer.Option(help="events per rebuild transaction")] = 10_000,
) -> None:
    """Blue/green rebuild rate against the eventsourcing library's plain ProjectionRunner."""
    from bench.rebuild import main as run_bench

    _logging("WARNING", fmt="text")
    run_bench(events_count=count, sample=sample, batch_size=batch_size)


@bench_app.command("lag")
def bench_lag(
    rate: Annotated[int, typer.Option(min=1, help="events appended per second")] = 500,
    seconds: Annotated[float, typer.Option(min=1, help="length of the paced run")] = 30,
    per_append: Annotated[int, typer.Option(min=1, help="events per append")] = 5,
) -> None:
    """p50/p99 time from an event's commit to its read-model row, at a paced rate."""
    from bench.lag import main as run_bench

    _logging("WARNING", fmt="text")
    run_bench(rate=rate, seconds=seconds, per_append=per_append)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
