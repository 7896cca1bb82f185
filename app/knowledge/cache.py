"""Cache-aside for the documents read model: document lookups, listings and search results.

Keys carry the projection's name and its live version (``v<version>``, followed through the
position watcher), so tables swapped in by a blue/green rebuild are never answered from values
of the previous version. They also carry a generation
(``projections.knowledge.cache_invalidation``): the document's bucket for a lookup, the whole
collection for listings and search, bumped once the read model has committed a change. Values
are cached in their JSON form, so a cached answer is byte for byte the answer the read model
gives."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from fastapi.encoders import jsonable_encoder

from app.cache.flight import CacheAside
from app.queries import decode_cursor
from projections.knowledge.cache_invalidation import COLLECTION, bucket, generations_key
from projections.knowledge.documents import DocumentsProjection

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from app.cache.service import Cache
    from app.knowledge.queries import DocumentQueries
    from app.positions import PositionWatcher
    from infra.settings import Settings


class CachedQueries:
    """The read-model queries the knowledge routes ask, through the cache."""

    def __init__(
        self, queries: DocumentQueries, cache: Cache, watcher: PositionWatcher, settings: Settings
    ) -> None:
        self.queries = queries
        self.watcher = watcher
        projection = DocumentsProjection.name
        options: dict[str, Any] = {
            "stale_s": settings.cache_stale_s,
            "lock_timeout_s": settings.cache_lock_timeout_s,
        }
        self.documents = CacheAside(
            cache, f"{projection}:document", ttl_s=settings.cache_ttl_s, **options
        )
        self.listings = CacheAside(
            cache, f"{projection}:list", ttl_s=settings.cache_search_ttl_s, **options
        )
        self.searches = CacheAside(
            cache, f"{projection}:search", ttl_s=settings.cache_search_ttl_s, **options
        )
        self.generations = generations_key(cache.prefix, projection)

    @property
    def ready(self) -> bool:
        """Whether the live version is known: until then a key could name the wrong one."""
        return self.watcher.versions_loaded

    def version(self) -> int:
        """The version of the live documents tables (the code's when none is recorded yet)."""
        name = DocumentsProjection.name
        return self.watcher.versions.get(name, DocumentsProjection.version)

    async def document(self, document_id: str, *, with_chunks: bool) -> dict[str, Any] | None:
        async def load() -> Any:
            return jsonable_encoder(
                await self.queries.document(document_id, with_chunks=with_chunks)
            )

        key = f"v{self.version()}:{int(with_chunks)}:{document_id}"
        value: dict[str, Any] | None = await self.documents.fetch(
            key, load, generation=(self.generations, bucket(document_id))
        )
        return value

    async def list_documents(self, cursor: str | None, limit: int) -> dict[str, Any]:
        """``{"items": [...], "next_cursor": ...}``; a bad cursor raises ``BadCursorError``."""

        if cursor:
            decode_cursor(cursor)  # a bad cursor is refused before it reaches Redis

        async def load() -> Any:
            items, next_cursor = await self.queries.documents(cursor, limit)
            return jsonable_encoder({"items": items, "next_cursor": next_cursor})

        key = f"v{self.version()}:{limit}:{cursor or ''}"
        value: dict[str, Any] = await self.listings.fetch(
            key, load, generation=(self.generations, COLLECTION)
        )
        return value

    async def search(
        self, parts: tuple[Any, ...], load: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        """A search's answer, by everything that shapes it (``parts``). An answer that fell
        back to text mode is not kept: the next search tries the embedder again."""

        async def fetch() -> Any:
            answer = jsonable_encoder(await load())
            if "fallback" in answer:
                raise _FellBackError(answer)
            return answer

        digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
        key = f"v{self.version()}:{digest}"
        try:
            value: dict[str, Any] = await self.searches.fetch(
                key, fetch, generation=(self.generations, COLLECTION)
            )
        except _FellBackError as exc:
            return exc.answer
        return value

    async def close(self) -> None:
        for cache in (self.documents, self.listings, self.searches):
            await cache.close()


class _FellBackError(Exception):
    """Carries an answer that must not be cached past the loader."""

    def __init__(self, answer: dict[str, Any]) -> None:
        super().__init__("fell back to text mode")
        self.answer = answer
