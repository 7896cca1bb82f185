"""The context registry is complete: every command type of every context has a topic, a
decision, a permission and an AsyncAPI entry; every projection is declared once, by a context
that stores the events it reads; and no part of the system names a context but its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from contexts import REGISTRY
from contexts.base import Context, ContextDeclarationError, Registry
from events.base import Command, Event, known_types
from events.outcomes import CommandRejected, CommandSucceeded
from events.topics import command_topic, dead_letter_topic, event_topic, retry_topic
from infra.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONTEXTS = REGISTRY.contexts
IDS = [c.name for c in CONTEXTS]


@pytest.mark.parametrize("context", CONTEXTS, ids=IDS)
def test_every_command_type_has_a_topic_a_decision_a_permission_and_an_asyncapi_entry(
    context: Context,
) -> None:
    topics = {spec.name for spec in REGISTRY.topic_specs(Settings())}
    decider = context.decider(Settings())
    permissions = REGISTRY.access.permissions
    channel = _asyncapi()["channels"][f"{context.name}Commands"]
    assert context.commands, f"{context.name} declares no command"
    for command in context.commands:
        assert context.name == command.CONTEXT
        topic = command_topic(command.CONTEXT)
        assert {topic, retry_topic(topic), dead_letter_topic(topic)} <= topics
        assert command in decider.commands, f"{context.name}'s decider has no {command.TYPE}"
        assert "PERMISSION" in vars(command) or any(
            "PERMISSION" in vars(base) for base in command.__mro__[1:] if base is not Command
        ), f"{command.TYPE} declares no permission"
        assert command.PERMISSION in permissions, f"{command.TYPE}: {command.PERMISSION}?"
        assert command.TYPE in channel["messages"], f"{command.TYPE} is not in the AsyncAPI doc"


@pytest.mark.parametrize("context", CONTEXTS, ids=IDS)
def test_a_decider_decides_exactly_its_contexts_commands(context: Context) -> None:
    decider = context.decider(Settings())
    assert decider.context == context.name
    assert decider.commands == frozenset(context.commands)


def test_every_message_type_belongs_to_exactly_one_context() -> None:
    declared = [t for c in CONTEXTS for t in (*c.commands, *c.events)]
    assert len(declared) == len(set(declared))
    platform = {CommandSucceeded, CommandRejected}
    known = {
        cls
        for name, cls in known_types().items()
        if issubclass(cls, Command | Event) and not name.startswith("Sample")
    }
    assert known - platform == set(declared), "a message type is not declared by its context"


@pytest.mark.parametrize("context", CONTEXTS, ids=IDS)
def test_every_context_has_its_event_topic(context: Context) -> None:
    topics = {spec.name for spec in REGISTRY.topic_specs(Settings())}
    assert event_topic(context.name) in topics


def test_every_projection_has_a_unique_name_and_reads_only_its_contexts_events() -> None:
    projections = REGISTRY.projections()
    names = [p.name for p in projections]
    assert len(names) == len(set(names))
    tables = [t for p in projections for t in p.tables]
    assert len(tables) == len(set(tables)), "two projections write the same table"
    outcome_types = {CommandSucceeded.TYPE, CommandRejected.TYPE}
    for p in projections:
        context = REGISTRY.context(p.context)
        stored = {e.TYPE for e in context.events} | outcome_types
        assert p.topics, f"{p.name} reads nothing"
        assert p.topics <= stored, f"{p.name} reads {p.topics - stored}, not {p.context}'s"
        assert p.name.startswith(f"{p.context}."), p.name


def test_every_context_has_a_command_outcomes_projection() -> None:
    names = {p.name for p in REGISTRY.projections()}
    for context in CONTEXTS:
        assert f"{context.name}.command_outcomes" in names


def test_every_permission_a_route_or_command_needs_is_granted_to_some_role() -> None:
    held = {
        p
        for role, perms in REGISTRY.access.role_permissions.items()
        if role != "admin"
        for p in perms
    }
    for context in CONTEXTS:
        for permission in context.grants:
            assert permission in REGISTRY.access.permissions
        assert context.http.events_permission in REGISTRY.access.permissions
        for command in context.commands:
            # Commands no role holds are an administrator's or the ingress's own acts.
            assert command.PERMISSION in held or command.PERMISSION in context.grants


def test_a_command_declared_by_another_context_is_refused() -> None:
    knowledge = REGISTRY.context("knowledge")
    identity = REGISTRY.context("identity")
    mixed = Context(**{**vars(knowledge), "commands": (*knowledge.commands, *identity.commands)})
    with pytest.raises(ContextDeclarationError, match="is declared by"):
        Registry(mixed)
    with pytest.raises(ContextDeclarationError, match="declared twice"):
        Registry(knowledge, knowledge)


# Where each context's name may appear: its own subpackages and declaration. Everything else
# reads the registry. (Benchmarks use the knowledge context as their workload.)
OWN = {
    "knowledge": (
        "events/knowledge/",
        "workers/knowledge/",
        "projections/knowledge/",
        "app/knowledge/",
        "contexts/knowledge.py",
        "bench/",
    ),
    "identity": (
        "events/identity/",
        "workers/identity/",
        "projections/identity/",
        "app/identity/",
        "cli/identity.py",
        "contexts/identity.py",
        "app/auth/",
        "infra/identity.py",
        "security/",
    ),
}
PACKAGES = (
    "app",
    "cli",
    "contexts",
    "events",
    "infra",
    "projections",
    "security",
    "telemetry",
    "uait",
    "workers",
)


@pytest.mark.parametrize("name", sorted(OWN))
def test_no_module_outside_a_context_names_it_in_code(name: str) -> None:
    pattern = re.compile(rf"""["'](uait\.(commands|events)\.)?{name}["'.:]""")
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith(OWN[name]) or rel == "contexts/__init__.py":
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code):
                    offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _asyncapi() -> dict:
    return yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text(encoding="utf-8"))
