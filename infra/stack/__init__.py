"""Embedded Kafka (Tansu), PostgreSQL and Redis for development and tests.

Every service whose URL setting is empty is started here as a child process and
waited for; a service named by a setting is handed back untouched. The children
run in their own session (so Ctrl-C reaches only us and we stop them in order) and,
on Linux, get a parent-death signal (so a SIGKILLed parent does not orphan them).
"""

from __future__ import annotations

from infra.databases import create_database, database_url_for, drop_database, eventsourcing_env
from infra.stack.embedded import EmbeddedStack, Endpoints
from infra.stack.probes import StackStartError

__all__ = [
    "EmbeddedStack",
    "Endpoints",
    "StackStartError",
    "create_database",
    "database_url_for",
    "drop_database",
    "eventsourcing_env",
]
