"""Every circuit-breaker state change becomes an audit entry.

The breakers' Lua script appends each change to a capped Redis stream in the same atomic step
as the change, whichever process made it. The ingress replicas read that stream as one consumer
group (each entry to one replica), publish a ``RecordAuditEvent`` per entry and acknowledge it
afterwards. A crash in between publishes the entry again with the same record id (derived from
the stream entry), which the audit stream refuses: one entry per change.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import TYPE_CHECKING, Any

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import RedisError, ResponseError

from events.identity.commands import RecordAuditEvent
from events.ids import NO_USER
from infra.breakers import CHANGES_KEY
from infra.publisher import BrokerUnavailableError

if TYPE_CHECKING:
    from infra.publisher import CommandPublisher

log = logging.getLogger("uait.auth")

GROUP = "audit"
RECORD_NAMESPACE = uuid.UUID("3c1f5e0a-7d42-5b9e-8a61-2e4b7c9d0f13")
ACTOR = "service:breakers"


def record_of(entry_id: str, fields: dict[str, str]) -> RecordAuditEvent:
    detail = f"{fields.get('breaker', '?')}: {fields.get('from', '?')} -> {fields.get('to', '?')}"
    reason = fields.get("reason", "")
    return RecordAuditEvent(
        user_id=str(NO_USER),
        record_id=str(uuid.uuid5(RECORD_NAMESPACE, f"{CHANGES_KEY}/{entry_id}")),
        action=f"breaker.{fields.get('to', 'changed')}",
        detail=(f"{detail} ({reason})" if reason else detail)[:200],
    )


def blocking_client(redis: Redis, block_ms: int) -> Redis:
    """A one-connection client of the same server whose reads outlast ``block_ms``.

    The shared pool's read timeout is a fraction of a second (a dead Redis must not stall a
    request), so a blocking XREADGROUP on it would time out before the server answers.
    """
    shared = redis.connection_pool
    kwargs = dict(shared.connection_kwargs)
    # The margin covers a busy event loop that handles the answer late.
    kwargs["socket_timeout"] = block_ms / 1000 + 5.0
    pool = ConnectionPool(connection_class=shared.connection_class, max_connections=1, **kwargs)
    return Redis(connection_pool=pool)


async def relay_breaker_changes(
    redis: Redis, publisher: CommandPublisher, *, block_ms: int = 1000
) -> None:
    """Until cancelled: publish each new state change as an audit entry, then acknowledge it."""
    redis = blocking_client(redis, block_ms)
    try:
        await _relay(redis, publisher, block_ms)
    finally:
        await redis.aclose(close_connection_pool=True)


async def _relay(redis: Redis, publisher: CommandPublisher, block_ms: int) -> None:
    consumer = f"{socket.gethostname()}-{os.getpid()}"
    ready = False
    while True:
        try:
            if not ready:
                try:
                    await redis.xgroup_create(CHANGES_KEY, GROUP, id="0", mkstream=True)
                except ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                ready = True
            # Own pending entries first (a publish that failed), then new ones.
            for start in ("0", ">"):
                replies: Any = await redis.xreadgroup(
                    GROUP, consumer, {CHANGES_KEY: start}, count=100,
                    block=None if start == "0" else block_ms,
                )  # fmt: skip
                for _stream, entries in replies or []:
                    for entry_id, raw in entries:
                        eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                        fields = {
                            (k.decode() if isinstance(k, bytes) else k): (
                                v.decode() if isinstance(v, bytes) else v
                            )
                            for k, v in raw.items()
                        }
                        await publisher.publish(record_of(eid, fields), actor=ACTOR)
                        await redis.xack(CHANGES_KEY, GROUP, eid)
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError, BrokerUnavailableError) as exc:
            log.warning("breaker audit relay: %s; retrying", exc)
            ready = False
            await asyncio.sleep(2)
