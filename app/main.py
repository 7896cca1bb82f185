"""The HTTP ingress: validate, publish commands, answer queries from the read models.

No write logic lives here: every state change is a command on Kafka.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from app import problems
from app.accepted import AcceptedLog
from app.auth.actors import IngressSigner
from app.auth.breaker_audit import relay_breaker_changes
from app.auth.principal import forbidden
from app.auth.runtime import build_auth
from app.deps import Deps
from app.hardening import JsonBodyGuard, install_cors, install_security_headers
from app.health import IngressHealth
from app.idempotency import IdempotencyMiddleware, IdempotencyStore
from app.lanes import install_lanes
from app.limits import BodySizeLimit
from app.observability import RequestMetrics, RequestTracing
from app.openai_errors import OpenAIErrors
from app.positions import PositionWatcher
from app.problems import V1_PROBLEMS, problem_responses
from app.queries import Queries
from app.ratelimit import RateLimiter, RateLimitMiddleware, rate_limit_groups
from app.redis_client import create_redis
from app.routes import admin, breakers, commands, dlq
from app.routes import events as events_routes
from app.routes import workers as workers_routes
from infra.publisher import BrokerUnavailableError, CommandPublisher
from security.actors import ActorIssuer
from telemetry.metrics import POOLS, REGISTRY

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from app.deps import AppContexts, Closer
    from infra.settings import Settings

log = logging.getLogger("uait.ingress")


class Readiness(BaseModel):
    status: Literal["pass", "fail"]
    checks: dict[str, Literal["pass", "fail"]]


def create_app(
    settings: Settings,
    contexts: AppContexts,
    *,
    database_url: str,
    kafka_bootstrap: str,
    tune_gc: bool = False,
) -> FastAPI:
    """The ingress app, serving every context of ``contexts``.

    ``tune_gc`` (the server process, not tests that build many apps): once started, what start-
    up built (modules, the app, keys, pools) is frozen out of the cyclic collector's sight, so
    its collections stop walking it again and again (``uait bench ingress``: publishes went from
    about 3,350 to 3,900-4,100 req/s)."""

    # Every policy, the contexts' too, checked before anything starts.
    policies = settings.rate_limits(contexts.rate_limit_defaults)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            database_url,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            timeout=settings.publish_timeout_s,
            open=False,
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open(wait=False)
        POOLS.watch_postgres("ingress", pool)
        publisher = CommandPublisher(
            kafka_bootstrap,
            timeout_s=settings.publish_timeout_s,
            max_message_bytes=settings.kafka_max_message_bytes,
        )
        try:
            await publisher.start()
        except BrokerUnavailableError as exc:
            # Start anyway: commands answer 503 until the broker is back; queries still work.
            log.warning("starting without Kafka: %s", exc)
        watcher = PositionWatcher(
            database_url,
            {p.name: f"{p.context}_tracking" for p in contexts.projections()},
            event_channels=tuple(f"{c}_events" for c in contexts.names),
        )
        await watcher.start()
        redis = create_redis(settings)
        queries = Queries(pool, contexts.outcome_tables)
        limiter: RateLimiter | None = None
        if redis is None:
            log.warning("UAIT_REDIS_URL is empty: rate limits fail open or closed per policy")
        else:
            POOLS.watch_redis("ingress", redis.connection_pool)
            limiter = app.state.ratelimiter = RateLimiter(redis)
            # A reservation outlives the longest request (publish, then Prefer: wait).
            app.state.idempotency = IdempotencyStore(
                redis,
                ttl_s=settings.idempotency_ttl_s,
                in_flight_s=settings.publish_timeout_s + settings.max_wait_s + 30,
            )
        accepted = AcceptedLog(pool)
        app.state.deps = deps = Deps(
            settings=settings,
            contexts=contexts,
            pool=pool,
            publisher=publisher,
            queries=queries,
            watcher=watcher,
            redis=redis,
            accepted=accepted,
        )
        app.state.health = IngressHealth(deps)
        app.state.auth = await build_auth(
            settings, pool, redis, publisher, limiter, contexts.access
        )
        publisher.signer = IngressSigner(ActorIssuer(app.state.auth.tokens))
        if redis is not None:
            app.state.auth.tasks.append(
                asyncio.create_task(relay_breaker_changes(redis, publisher), name="breaker-audit")
            )
        closers: list[Closer] = []
        for context in contexts.contexts:
            if context.http.start is not None and (close := await context.http.start(deps)):
                closers.append(close)
        if tune_gc:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            for close in reversed(closers):
                await close()
            await app.state.auth.stop()
            await accepted.stop()
            POOLS.forget("ingress")
            await watcher.stop()
            await publisher.stop()
            with contextlib.suppress(Exception):
                await pool.close()
            if redis is not None:
                with contextlib.suppress(Exception):
                    await redis.aclose(close_connection_pool=True)

    app = FastAPI(
        title="Universal AI Tools",
        version="0.1.0",
        summary="Commands go to Kafka; queries read replayable projections.",
        lifespan=lifespan,
        # FastAPI's own server span does not become the current span of the endpoint, so the
        # Kafka produce span could not join it; RequestTracing below does this instead.
        telemetry={"tracing": False, "metrics": False},
    )
    problems.install(app)
    for context in contexts.contexts:
        for router in context.http.routers:
            app.include_router(router)
    app.include_router(commands.router)
    app.include_router(admin.router)
    app.include_router(events_routes.router, responses=problem_responses(*V1_PROBLEMS, 400, 404))
    app.include_router(breakers.router)
    app.include_router(workers_routes.router)
    app.include_router(dlq.router)
    install_lanes(app, *(lane for c in contexts.contexts for lane in c.http.lanes))

    @app.get("/livez", tags=["health"])
    async def livez() -> dict[str, str]:
        """The process is alive (no dependency is checked)."""
        return {"status": "pass"}

    @app.get(
        "/readyz",
        tags=["health"],
        responses={
            200: {"model": Readiness, "description": "Ready"},
            503: {"model": Readiness, "description": "Not ready: a check failed"},
        },
    )
    async def readyz(request: Request) -> JSONResponse:
        """Ready to take commands: PostgreSQL, Kafka and Redis answer (lag never fails it)."""
        report = await request.app.state.health.report()
        checks = {
            name.split(":")[0]: "fail" if entries[0]["status"] == "fail" else "pass"
            for name, entries in report["checks"].items()
        }
        ok = report["status"] != "fail"
        return JSONResponse(
            {"status": "pass" if ok else "fail", "checks": checks}, status_code=200 if ok else 503
        )

    health_json = {"application/health+json": {"schema": {"type": "object"}}}

    @app.get(
        "/health",
        tags=["health"],
        response_class=Response,
        responses={
            200: {"description": "Every check passes or only warns", "content": health_json},
            503: {"description": "A check fails", "content": health_json},
        },
    )
    async def health(request: Request) -> Response:
        """Every check in application/health+json, with observed latency; lag only warns."""
        report = await request.app.state.health.report()
        return Response(
            orjson.dumps(report),
            status_code=503 if report["status"] == "fail" else 200,
            media_type="application/health+json",
        )

    if settings.bench_bare_route:

        @app.get("/bench/bare", include_in_schema=False)
        async def bare() -> dict[str, bool]:
            """A constant answer: the baseline of `uait bench ingress`."""
            return {"ok": True}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if not settings.metrics_public:  # then only an admin (e.g. the scraper's API key)
            principal = await request.app.state.auth.authenticator.authenticate(request)
            if "admin" not in principal.permissions:
                raise forbidden("admin")
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    # Idempotency inside the size limit (it buffers the body), rate limits outside it.
    app.add_middleware(IdempotencyMiddleware, settings=settings)
    # Inside the size limit: the JSON shape is scanned only once the body is known to be bounded.
    app.add_middleware(
        JsonBodyGuard, max_depth=settings.json_max_depth, max_items=settings.json_max_items
    )
    # The largest legitimate body is one document's text plus JSON escaping and metadata.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_text_bytes * 2 + 64 * 1024)
    app.add_middleware(
        RateLimitMiddleware,
        settings=settings,
        policies=policies,
        groups=rate_limit_groups(contexts.rate_limit_routes),
    )
    openai_paths = tuple(p for c in contexts.contexts for g in c.http.error_shapes for p in g)
    if openai_paths:
        # Outside the limits: their 413s and 429s are told in OpenAI's shape there too.
        app.add_middleware(OpenAIErrors, prefixes=openai_paths)
    install_cors(app, settings)  # outside the limits: a 429 or 413 stays readable by the page
    install_security_headers(app, settings)  # on every answer, the other middlewares' too
    app.add_middleware(RequestTracing)
    app.add_middleware(RequestMetrics)  # outermost: counts the 413s of the size limit too
    return app
