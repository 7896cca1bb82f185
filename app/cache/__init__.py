"""The Redis cache service and cache-aside with single-flight across replicas."""

from app.cache.flight import CacheAside
from app.cache.service import Cache, CacheUnavailableError

__all__ = ["Cache", "CacheAside", "CacheUnavailableError"]
