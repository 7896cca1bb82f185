"""Every breaker any process has used, by name, with the config each was last registered with."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from infra.breakers.breaker import Breaker
from infra.breakers.model import BreakerConfig
from infra.breakers.script import REGISTRY_KEY

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from infra.breakers.model import BreakerStatus


class BreakerRegistry:
    """Every breaker any process has used, by name (the names are a Redis set)."""

    def __init__(self, redis: Redis, default_config: BreakerConfig | None = None) -> None:
        self.redis = redis
        self.default_config = default_config or BreakerConfig()
        self._breakers: dict[str, Breaker] = {}

    async def names(self) -> list[str]:
        members = await self.redis.smembers(REGISTRY_KEY)
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)

    async def exists(self, name: str) -> bool:
        return bool(await self.redis.sismember(REGISTRY_KEY, name))

    async def get(self, name: str, config: BreakerConfig | None = None) -> Breaker:
        """The breaker of that name, with its stored config unless one is given."""
        if config is None and (known := self._breakers.get(name)) is not None:
            return known
        breaker = Breaker(name, self.redis, config or await self._stored_config(name))
        self._breakers[name] = breaker
        return breaker

    async def status(self, name: str) -> BreakerStatus:
        breaker = await self.get(name)
        stored = await self._stored_config_dict(name)
        return breaker.status_of(await breaker.run("status"), stored)

    async def statuses(self) -> list[BreakerStatus]:
        return [await self.status(name) for name in await self.names()]

    async def _stored_config_dict(self, name: str) -> dict[str, Any] | None:
        raw = await self.redis.hget(f"uait:breaker:{{{name}}}", "config")
        if not raw:
            return None
        value = orjson.loads(raw)
        return value if isinstance(value, dict) else None

    async def _stored_config(self, name: str) -> BreakerConfig:
        stored = await self._stored_config_dict(name)
        if stored is None:
            return self.default_config
        try:
            return BreakerConfig(**stored)
        except ValueError:
            return self.default_config
