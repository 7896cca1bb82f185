"""What the knowledge routes read through: the documents queries, and the cache in front of them
(built when the app starts, kept in ``Deps.extensions``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from app.cache import Cache
from app.knowledge.cache import CachedQueries
from app.knowledge.queries import DocumentQueries
from app.knowledge.search import Searcher
from events.knowledge.commands import KnowledgeCommand
from infra.embeddings import EmbedderUnavailableError, embedder_for

if TYPE_CHECKING:
    from app.deps import Closer, Deps

NAME = KnowledgeCommand.CONTEXT
log = logging.getLogger("uait.knowledge")


@dataclass(frozen=True)
class KnowledgeState:
    queries: DocumentQueries
    searcher: Searcher
    cached: CachedQueries | None
    """The queries through the cache (None: cache disabled or no Redis)."""


async def start(d: Deps) -> Closer | None:
    queries = DocumentQueries(d.pool)
    try:
        embedder = embedder_for(d.settings)
    except EmbedderUnavailableError as exc:
        log.warning("search answers in text mode only: %s", exc)
        embedder = None
    searcher = Searcher(
        queries,
        embedder,
        candidates=d.settings.search_candidates,
        ef_search=d.settings.vector_ef_search,
    )
    cached: CachedQueries | None = None
    if d.redis is not None and d.settings.cache_enabled:
        s = d.settings
        cache = Cache(
            d.redis,
            prefix=s.cache_prefix,
            default_ttl_s=s.cache_ttl_s,
            jitter=s.cache_ttl_jitter,
            scan_batch=s.cache_scan_batch,
        )
        cached = CachedQueries(queries, cache, d.watcher, s)
    d.extensions[NAME] = KnowledgeState(queries, searcher, cached)
    return cached.close if cached is not None else None


def knowledge(d: Deps) -> KnowledgeState:
    return cast("KnowledgeState", d.extensions[NAME])
