"""Cancellation of commands, delivered through Redis so it reaches a busy worker at once.

``request_cancel`` keeps a key per cancelled command (``uait:cancel:<id>``, for workers that
start the command later) and publishes its id on ``uait:cancellations`` (for a handler running
it now). Each worker keeps the ids it heard in memory: a running handler's cancel token reads
that set, so a cancellation reaches it even while its partition is busy with a long batch.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from redis.asyncio import Redis

log = logging.getLogger("uait.worker")

CHANNEL = "uait:cancellations"
_PRIME_TIMEOUT_S = 0.5


def cancel_key(command_id: uuid.UUID) -> str:
    return f"uait:cancel:{command_id}"


async def request_cancel(redis: Redis, command_id: uuid.UUID, *, ttl_s: int) -> None:
    await redis.set(cancel_key(command_id), b"1", ex=ttl_s)
    await redis.publish(CHANNEL, str(command_id))


class CancelWatcher:
    """The cancelled command ids this worker knows of (read from any thread)."""

    def __init__(self, redis: Redis | None) -> None:
        self.redis = redis
        self._cancelled: set[uuid.UUID] = set()

    def is_cancelled(self, command_id: uuid.UUID) -> bool:
        return command_id in self._cancelled

    async def prime(self, command_ids: Iterable[uuid.UUID]) -> None:
        """Learn which of these commands were cancelled before this worker listened."""
        ids = [c for c in command_ids if c not in self._cancelled]
        if self.redis is None or not ids:
            return
        try:
            # Bounded: a slow Redis must not hold up the partition (the pub/sub still reaches
            # a command that runs long).
            found = await asyncio.wait_for(
                self.redis.mget([cancel_key(c) for c in ids]), _PRIME_TIMEOUT_S
            )
        except (RedisError, TimeoutError) as exc:
            log.warning("cancellations: Redis unavailable (%s); running the batch as it is", exc)
            return
        self._cancelled.update(c for c, hit in zip(ids, found, strict=True) if hit)

    async def run(self) -> None:
        """Follow the cancellation channel; reconnect after a Redis outage."""
        assert self.redis is not None
        while True:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    async for message in pubsub.listen():
                        self._heard(message.get("data"))
            except (RedisError, OSError) as exc:
                log.warning("cancellations: Redis unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)

    def _heard(self, data: object) -> None:
        try:
            text = data.decode() if isinstance(data, bytes) else str(data)
            self._cancelled.add(uuid.UUID(text))
        except ValueError:
            log.warning("cancellations: ignoring %r (not a command id)", data)
