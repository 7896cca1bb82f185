"""The long-running processes: worker, projection runner, relay and HTTP ingress, each with its
own ops endpoints (/metrics, /livez, /readyz, /health)."""

from __future__ import annotations

import asyncio
import gc
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.console import console, load_settings, setup_logging
from contexts import REGISTRY

if TYPE_CHECKING:
    from infra.settings import Settings


INGRESS_STOP_DEADLINE_S = 5
"""On SIGTERM the ingress stops accepting, lets requests finish this long, then closes the rest."""


def prepare(settings: Settings, *, need_kafka: bool = True) -> None:
    """Migrations and every context's topics (both idempotent; every process runs them)."""
    from infra.startup import prepare as prepare_with

    prepare_with(settings, REGISTRY.topic_specs(settings), need_kafka=need_kafka)


def ready(settings: Settings, *, need_kafka: bool = True) -> Settings:
    from infra.startup import require_endpoints

    require_endpoints(settings)
    prepare(settings, need_kafka=need_kafka)
    return settings


def freeze_start_up() -> None:
    """Move what start-up built (modules, every context's declaration, pools) out of the cyclic
    collector's sight, so its collections stop walking it again and again (the ingress does the
    same in ``create_app(tune_gc=True)``)."""
    gc.collect()
    gc.freeze()


def serve_ops(settings: Settings, port: int, service: str, checks: dict[str, Any]) -> None:
    """This process's /metrics, /livez, /readyz and /health (each process has its own port)."""
    from infra import ops

    ops.start(settings, port, service, {**ops.common_checks(settings), **checks})


def worker(
    context: Annotated[
        list[str] | None, typer.Option(help="contexts to serve (default all)")
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="max commands per transaction")] = None,
) -> None:
    """Consume commands, decide, and append to the event store."""
    from infra.databases import eventsourcing_env
    from infra.ops import kafka_assignment
    from workers.main import build_worker

    setup_logging(service="uait-worker")
    settings = ready(load_settings())
    unknown = set(context or []) - set(REGISTRY.names)
    if unknown:
        console.print(f"[red]unknown context(s):[/red] {', '.join(sorted(unknown))}")
        raise typer.Exit(2)
    w = build_worker(
        settings,
        REGISTRY.contexts,
        kafka_bootstrap=settings.kafka_bootstrap,
        es_env=eventsourcing_env(settings.database_url),
        only=context,
        batch_size=batch_size,
    )
    serve_ops(
        settings,
        settings.worker_metrics_port,
        "uait-worker",
        {"kafka": kafka_assignment(lambda: list(w.broker.subscribers))},
    )
    freeze_start_up()
    try:
        asyncio.run(w.app.run())
    finally:
        w.close()


def projections_run(
    name: Annotated[list[str] | None, typer.Option(help="projections to run (default all)")] = None,
) -> None:
    """Follow the event store and keep the read models up to date."""
    from infra.ops import projections_lag
    from projections.process import run_projections

    setup_logging(service="uait-projections")
    settings = ready(load_settings(), need_kafka=False)
    serve_ops(
        settings,
        settings.projections_metrics_port,
        "uait-projections",
        {"projections": projections_lag(settings.database_url, REGISTRY.names)},
    )
    projections = REGISTRY.projections()
    freeze_start_up()
    run_projections(settings, projections, REGISTRY.cache_followers, names=name)


def relay() -> None:
    """Publish public stored events, in store order, to uait.events.<context>."""
    from projections.process import run_relay

    setup_logging(service="uait-relay")
    settings = ready(load_settings())
    serve_ops(settings, settings.relay_metrics_port, "uait-relay", {})
    freeze_start_up()
    run_relay(settings, REGISTRY.relays)


def ingress(
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Serve the HTTP API."""
    import uvicorn

    from app.main import create_app
    from infra.startup import ensure_signing_key

    setup_logging(service="uait-ingress")
    settings = ready(load_settings(), need_kafka=False)
    ensure_signing_key(settings)
    api = create_app(
        settings,
        REGISTRY,
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
        # Open streams (SSE, WebSockets) would hold a stop forever: cut them after this.
        timeout_graceful_shutdown=INGRESS_STOP_DEADLINE_S,
    )
