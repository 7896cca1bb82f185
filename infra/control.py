"""Pause and resume workers without leaving the consumer group.

The paused contexts are a Redis set (``uait:workers:paused``), shared by every worker process and
changed by ``uait workers pause|resume`` or the admin API. Each worker checks it twice a second
and pauses (or resumes) fetching on the partitions it holds: it keeps heart-beating, so the group
does not rebalance, and it resumes exactly where it was. Partitions gained in a rebalance while
paused are paused at the next check.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from events.topics import context_of_topic
from telemetry.metrics import WORKER_PAUSED

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger("uait.worker")

PAUSED_KEY = "uait:workers:paused"


async def set_paused(redis: Redis, contexts: list[str], paused: bool) -> None:
    if paused:
        await redis.sadd(PAUSED_KEY, *contexts)
    else:
        await redis.srem(PAUSED_KEY, *contexts)


async def paused_contexts(redis: Redis) -> set[str]:
    return {
        m.decode() if isinstance(m, bytes) else str(m) for m in await redis.smembers(PAUSED_KEY)
    }


class PauseControl:
    """Applies the shared paused set to this process's consumers."""

    def __init__(self, redis: Redis, subscribers: list[Any], *, interval_s: float = 0.5) -> None:
        self.redis = redis
        self.subscribers = subscribers
        self.interval_s = interval_s
        self._paused: set[str] = set()

    async def run(self) -> None:
        while True:
            try:
                self._paused = await paused_contexts(self.redis)
            except RedisError as exc:
                # Keep the last known state: a Redis outage neither pauses nor resumes anything.
                log.warning("pause control: Redis unavailable (%s); keeping the last state", exc)
            self.apply()
            await asyncio.sleep(self.interval_s)

    def apply(self) -> None:
        for subscriber in self.subscribers:
            consumer = getattr(subscriber, "consumer", None)
            if consumer is None:
                continue
            for topic in getattr(subscriber, "topic_names_for_subscribe", ()):
                context = context_of_topic(topic)
                held = [tp for tp in consumer.assignment() if tp.topic == topic]
                if context in self._paused:
                    fresh = [tp for tp in held if tp not in consumer.paused()]
                    if fresh:
                        consumer.pause(*fresh)
                        log.info("%s: paused %d partition(s)", context, len(fresh))
                    WORKER_PAUSED.labels(context).set(1)
                else:
                    stopped = [tp for tp in consumer.paused() if tp.topic == topic]
                    if stopped:
                        consumer.resume(*stopped)
                        log.info("%s: resumed %d partition(s)", context, len(stopped))
                    WORKER_PAUSED.labels(context).set(0)
