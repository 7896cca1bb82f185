"""Cache invalidation driven by the events that change the documents read model.

Cached document lookups carry a generation: the value of one field of a Redis hash, one field per
bucket of document ids (a fixed number of buckets, so the hash never grows), plus one field for
the whole collection that listings and search results carry. This follower bumps the fields of
every document an event touched.

It runs on the projection runner, tracked like a projection, and never reads past the position
the documents projection has committed (``behind``): a generation moves only after the rows it
stands for are visible. A reader takes the generation before it reads the rows, so a value loaded
from rows older than a change is always stored under a generation the change has already left
behind. A crash between a bump and its tracking commit bumps again: harmless.
"""

from __future__ import annotations

import logging
import zlib
from typing import TYPE_CHECKING, Any, ClassVar

from redis.exceptions import RedisError

from events.knowledge.events import DocumentDeleted, DocumentIngested
from projections.base import TransientProjectionError
from projections.knowledge.documents import DocumentsProjection
from telemetry.metrics import CACHE_INVALIDATIONS

if TYPE_CHECKING:
    from psycopg import Cursor
    from redis import Redis

    from projections.base import Envelope

log = logging.getLogger("uait.projections")

BUCKETS = 4096
COLLECTION = "*"
"""The generation field of listings and search results: every document change bumps it."""


def generations_key(prefix: str, projection: str = DocumentsProjection.name) -> str:
    """The Redis hash of a read model's generations, in the cache namespace ``prefix``."""
    return f"{prefix}:gen:{projection}"


def bucket(document_id: str) -> str:
    """The generation field of one document (crc32, stable across processes and restarts)."""
    return str(zlib.crc32(document_id.encode()) % BUCKETS)


class CacheInvalidation:
    """A "projection" whose view is the cache's generations of the documents read model."""

    name: ClassVar[str] = "knowledge.cache"
    context: ClassVar[str] = "knowledge"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ()
    topics: ClassVar[frozenset[str]] = frozenset({DocumentIngested.TYPE, DocumentDeleted.TYPE})
    behind: ClassVar[str] = DocumentsProjection.name

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.key = generations_key(prefix)

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        return None

    def create_indexes(self, cur: Cursor[Any]) -> None:
        return None

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        touched = {
            bucket(env.event.document_id)
            for env in batch
            if isinstance(env.event, DocumentIngested | DocumentDeleted)
        }
        if not touched:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for field in sorted(touched):
                pipe.hincrby(self.key, field, 1)
            pipe.hincrby(self.key, COLLECTION, 1)
            pipe.execute()
        except RedisError as exc:
            raise TransientProjectionError(f"cache generations not bumped: {exc}") from exc
        CACHE_INVALIDATIONS.labels(self.name, "document").inc(len(touched))
        CACHE_INVALIDATIONS.labels(self.name, "collection").inc()
