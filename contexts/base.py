"""One declaration per bounded context, and the registry every process reads.

A context's declaration names everything it brings: its command and event types (hence its
topics), its decider, its read models, its HTTP part, its CLI groups, its permissions and the
roles they are granted to, and its rate-limit policies. The worker wiring, the app factory, the
command line, the projection runner, the topic provisioning and the AsyncAPI document all read
the registry; none of them names a context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from events.access import AccessPolicy, Grants
from events.base import Command, Event, Message
from projections.command_outcomes import CommandOutcomesProjection
from projections.relay import EventRelay

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import ModuleType

    import redis
    import typer

    from app.deps import HttpPart, RouteGroup
    from infra.settings import Settings
    from infra.topics import TopicSpec
    from projections.base import Projection
    from projections.relay import BlockingProducer
    from workers.plugins import DeciderFactory, RunHandlerFactory


M = TypeVar("M", bound=Message)


def declared_in(module: ModuleType, kind: type[M]) -> tuple[type[M], ...]:
    """The message types of ``kind`` that ``module`` defines (not those it imports), in the
    order it defines them: a context declares its commands and events by module."""
    return tuple(
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, kind)
        and value.__module__ == module.__name__
        and "TYPE" in vars(value)
    )


class ContextDeclarationError(ValueError):
    """Raised when a context's declaration contradicts itself or another context's."""


@dataclass(frozen=True)
class Context:
    name: str
    summary: str
    """One line: what the context is about (docs, the AsyncAPI document's tags)."""
    commands: tuple[type[Command], ...]
    events: tuple[type[Event], ...]
    record_key: str
    """What its commands' Kafka key is (the aggregate they address), for the AsyncAPI document."""
    decider: DeciderFactory
    read_models: Callable[[AccessPolicy], list[Projection]]
    """Its projections, given the access policy (some read models show it)."""
    http: HttpPart
    grants: Grants = field(default_factory=dict)
    """Its permissions, and the roles that hold each (``admin`` holds them all)."""
    roles: frozenset[str] = frozenset()
    """The roles it defines (the identity context defines them all)."""
    rate_limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Default rate-limit policies its HTTP route groups count against."""
    cli: tuple[tuple[str, typer.Typer], ...] = ()
    """Its command groups: ``uait <name> ...``."""
    cache_followers: Callable[[redis.Redis, str], list[Projection]] | None = None
    """Projections whose view is the cache, on a Redis client and the cache's key prefix."""
    outcomes_table: str | None = None
    """Its command outcomes' table (default ``<name>_command_outcomes``)."""
    runs: RunHandlerFactory | None = None
    """How its long-running commands run (``workers.runs``); None when it has none."""

    @property
    def public_event_types(self) -> frozenset[str]:
        return frozenset(e.TYPE for e in self.events if e.PUBLIC)

    def outcomes(self) -> CommandOutcomesProjection:
        return CommandOutcomesProjection(self.name, self.outcomes_table)


class Registry:
    """Every context of the system, in order (the first is the default where one is needed)."""

    def __init__(self, *contexts: Context) -> None:
        self.contexts = contexts
        _check(contexts)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.contexts)

    def context(self, name: str) -> Context:
        for c in self.contexts:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def commands(self) -> tuple[type[Command], ...]:
        return tuple(t for c in self.contexts for t in c.commands)

    @cached_property
    def access(self) -> AccessPolicy:
        roles = frozenset(r for c in self.contexts for r in c.roles)
        return AccessPolicy.from_grants(roles, *(c.grants for c in self.contexts))

    def projections(self) -> list[Projection]:
        """Every read model: each context's own, then its command outcomes."""
        return [p for c in self.contexts for p in (*c.read_models(self.access), c.outcomes())]

    @property
    def outcome_tables(self) -> tuple[str, ...]:
        return tuple(c.outcomes().tables[0] for c in self.contexts)

    def relays(self, producer: BlockingProducer) -> list[EventRelay]:
        """A relay per context with public events, sharing ``producer``."""
        return [
            EventRelay(producer, c.name, c.public_event_types)
            for c in self.contexts
            if c.public_event_types
        ]

    def cache_followers(self, client: redis.Redis, prefix: str) -> list[Projection]:
        return [
            p
            for c in self.contexts
            if c.cache_followers is not None
            for p in c.cache_followers(client, prefix)
        ]

    @property
    def rate_limit_defaults(self) -> dict[str, Mapping[str, Any]]:
        return {name: spec for c in self.contexts for name, spec in c.rate_limits.items()}

    @property
    def rate_limit_routes(self) -> tuple[RouteGroup, ...]:
        return tuple(g for c in self.contexts for g in c.http.rate_limit_routes)

    def topic_specs(self, settings: Settings) -> list[TopicSpec]:
        from infra.topics import topic_specs

        return topic_specs(settings, self.names)


def _check(contexts: tuple[Context, ...]) -> None:
    names = [c.name for c in contexts]
    if len(set(names)) != len(names):
        raise ContextDeclarationError(f"a context is declared twice: {names}")
    for c in contexts:
        for command in c.commands:
            if c.name != command.CONTEXT:
                raise ContextDeclarationError(
                    f"{command.TYPE} says its context is {command.CONTEXT!r}, "
                    f"but is declared by {c.name!r}"
                )
    policies = [name for c in contexts for name in c.rate_limits]
    if len(set(policies)) != len(policies):
        raise ContextDeclarationError(f"a rate-limit policy is declared twice: {policies}")
