"""What the routes need, built once by the composition root and kept on ``app.state``; and what
a context plugs into the ingress.

A context brings its routers (and lanes for hot routes), the permission that reads its event
stream, the route groups its rate-limit policies cover, and optionally a start-up hook that
builds what its routes need (kept in ``Deps.extensions`` under the context's name). The app
factory reads every context through ``AppContexts``; it names none of them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from fastapi import Request  # noqa: TC002  (FastAPI resolves this annotation at runtime)

from events.access import ADMIN

if TYPE_CHECKING:
    from fastapi import APIRouter
    from psycopg_pool import AsyncConnectionPool
    from redis.asyncio import Redis
    from starlette.routing import Route

    from app.accepted import AcceptedLog
    from app.positions import PositionWatcher
    from app.queries import Queries
    from events.access import AccessPolicy
    from infra.publisher import CommandPublisher
    from infra.settings import Settings
    from projections.base import Projection


@dataclass
class Deps:
    settings: Settings
    contexts: AppContexts
    pool: AsyncConnectionPool[Any]
    publisher: CommandPublisher
    queries: Queries
    watcher: PositionWatcher
    redis: Redis | None = None
    """The process's one Redis client (rate limits, idempotency, breakers, worker control)."""
    accepted: AcceptedLog | None = None
    """Group-commit writer of accepted commands' command_log rows (None: one INSERT each)."""
    extensions: dict[str, Any] = field(default_factory=dict)
    """Each context's own state (its start-up hook's), under the context's name."""


async def deps(request: Request) -> Deps:
    # async: FastAPI would run a plain function in its thread pool, on every request.
    return cast("Deps", request.app.state.deps)


RouteGroup = tuple[frozenset[str] | None, str, tuple[str, ...]]
"""(methods, or None for any; a path prefix; the rate-limit policies a request there counts
against, in order)."""

Closer = Callable[[], Awaitable[None]]
Starter = Callable[[Deps], Awaitable[Closer | None]]


@dataclass(frozen=True)
class HttpPart:
    routers: tuple[APIRouter, ...] = ()
    lanes: tuple[Route, ...] = ()
    """Hot routes served ahead of FastAPI's router (``app.lanes``)."""
    start: Starter | None = None
    """Builds the context's state once the app's own is up; returns what to await at shutdown."""
    events_permission: str = ADMIN
    """Who may read the context's event stream (``/v1/events``)."""
    rate_limit_routes: tuple[RouteGroup, ...] = ()
    error_shapes: tuple[tuple[str, ...], ...] = ()
    """Path prefixes whose errors are told in OpenAI's shape, not problem+json
    (``app.openai_errors``)."""


class HttpContext(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def http(self) -> HttpPart: ...


class AppContexts(Protocol):
    """The context registry as the ingress sees it."""

    @property
    def names(self) -> tuple[str, ...]: ...

    @property
    def contexts(self) -> Sequence[HttpContext]: ...

    @property
    def access(self) -> AccessPolicy: ...

    @property
    def outcome_tables(self) -> tuple[str, ...]: ...

    @property
    def rate_limit_defaults(self) -> Mapping[str, Mapping[str, Any]]: ...

    @property
    def rate_limit_routes(self) -> tuple[RouteGroup, ...]: ...

    def projections(self) -> Sequence[Projection]: ...
