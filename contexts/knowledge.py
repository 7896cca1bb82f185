"""The knowledge context: documents, their versions and chunks, and full-text search."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.knowledge.plugin import HTTP
from contexts.base import Context, declared_in
from events.base import Command, Event
from events.knowledge import commands, events
from infra.embeddings import embedder_for
from projections.knowledge.cache_invalidation import CacheInvalidation
from projections.knowledge.documents import DocumentsProjection
from workers.knowledge.handlers import KnowledgeDecider

if TYPE_CHECKING:
    from events.access import AccessPolicy
    from infra.settings import Settings
    from projections.base import Projection


def _decider(settings: Settings) -> KnowledgeDecider:
    return KnowledgeDecider(
        max_text_bytes=settings.max_text_bytes,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        embedder=embedder_for(settings),
    )


def _read_models(access: AccessPolicy) -> list[Projection]:
    return [DocumentsProjection()]


CONTEXT = Context(
    name=commands.KnowledgeCommand.CONTEXT,
    summary="Documents, chunking, embeddings and hybrid (full-text and vector) search.",
    commands=declared_in(commands, Command),
    events=declared_in(events, Event),
    record_key="the command's `document_id`",
    decider=_decider,
    read_models=_read_models,
    http=HTTP,
    grants={
        "knowledge:read": ("user", "viewer", "service"),
        "knowledge:write": ("user", "service"),
    },
    # Writes fail open: Redis only guards the door, Kafka absorbs a burst and the body size
    # limit still holds, so a Redis outage must not become an outage of the write API.
    rate_limits={"knowledge": {"limit": 40, "period_s": 60, "cost": 1, "fail_open": True}},
    cache_followers=lambda client, prefix: [CacheInvalidation(client, prefix)],
    # Its table kept the name it had before every context had its own.
    outcomes_table="command_outcomes",
)
