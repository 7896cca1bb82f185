"""The Kafka topics the service needs, and creating the missing ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from events.topics import command_topic, dead_letter_topic, event_topic, retry_topic

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from infra.settings import Settings

log = logging.getLogger("uait.topics")

# Kafka error codes (https://kafka.apache.org/protocol#protocol_error_codes).
_TOPIC_ALREADY_EXISTS = 36
_CONFIG_REJECTED = frozenset({40, 44})  # INVALID_CONFIG, POLICY_VIOLATION
_POLL_INTERVAL_S = 0.1
RETRY_HEADROOM_BYTES = 64 * 1024
"""Room on the retry and dead-letter topics for the headers a worker adds to a command."""


class TopicPartitionMismatchError(RuntimeError):
    """A topic exists with fewer partitions than the settings ask for."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(settings: Settings, contexts: Iterable[str]) -> list[TopicSpec]:
    """Command topic, its retry and dead-letter topics and event topic of each context.

    The retry topic has the command topic's partitions: it is keyed by the same aggregate ids.
    """
    config = {"max.message.bytes": str(settings.kafka_max_message_bytes)}
    # A command as large as its topic takes still fits with the headers the retry path adds.
    retried = {"max.message.bytes": str(settings.kafka_max_message_bytes + RETRY_HEADROOM_BYTES)}
    specs: list[TopicSpec] = []
    for context in contexts:
        commands = command_topic(context)
        specs += [
            TopicSpec(commands, settings.command_partitions, dict(config)),
            TopicSpec(retry_topic(commands), settings.command_partitions, dict(retried)),
            TopicSpec(dead_letter_topic(commands), settings.command_partitions, dict(retried)),
            TopicSpec(event_topic(context), settings.event_partitions, dict(config)),
        ]
    return specs


async def ensure_topics(
    bootstrap: str,
    specs: Iterable[TopicSpec],
    *,
    replication_factor: int = 1,
    timeout_s: float = 30,
) -> list[str]:
    """Create the missing topics and return their names; check the existing ones.

    Raises ``TopicPartitionMismatchError`` if a topic has fewer partitions than
    its spec (more is fine: keys only need a stable partition count, which
    shrinking would break and growing is an operator's deliberate choice).
    """
    wanted = {spec.name: spec for spec in specs}
    async with _admin(bootstrap, timeout_s) as admin:
        existing = await _partition_counts(admin, wanted)
        _check_partitions(wanted.values(), existing)
        missing = [spec for name, spec in wanted.items() if name not in existing]
        created = await _create(admin, missing, replication_factor)
        # Topics another process created meanwhile must pass the same check.
        existing = await _wait_visible(admin, wanted)
        _check_partitions(wanted.values(), existing)
    if created:
        log.info("created topics %s", ", ".join(created))
    return created


async def describe_topics(
    bootstrap: str, names: Iterable[str], *, timeout_s: float = 30
) -> dict[str, int]:
    """Topic name -> partition count, for those of ``names`` that exist."""
    async with _admin(bootstrap, timeout_s) as admin:
        return await _partition_counts(admin, names)


@contextlib.asynccontextmanager
async def _admin(bootstrap: str, timeout_s: float) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client; the whole block must finish within ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s):
            admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
            await admin.start()
            try:
                yield admin
            finally:
                await admin.close()
    except TimeoutError:
        raise TimeoutError(
            f"Kafka at {bootstrap} did not complete the topic operation in {timeout_s} s"
        ) from None


async def _partition_counts(admin: AIOKafkaAdminClient, names: Iterable[str]) -> dict[str, int]:
    # Ask for all topics: naming them in a Metadata request can auto-create them.
    topics: list[dict[str, Any]] = await admin.describe_topics(None)
    wanted = set(names)
    return {
        t["topic"]: len(t["partitions"])
        for t in topics
        if t["topic"] in wanted and t["error_code"] == 0
    }


def _check_partitions(specs: Iterable[TopicSpec], existing: dict[str, int]) -> None:
    short = [
        f"{spec.name} has {existing[spec.name]} partitions, settings ask for {spec.partitions}"
        for spec in specs
        if spec.name in existing and existing[spec.name] < spec.partitions
    ]
    if short:
        raise TopicPartitionMismatchError(
            "; ".join(short) + ". Add partitions (kafka-topics --alter) or lower "
            "UAIT_COMMAND_PARTITIONS / UAIT_EVENT_PARTITIONS."
        )


async def _create(
    admin: AIOKafkaAdminClient, specs: list[TopicSpec], replication_factor: int
) -> list[str]:
    created: list[str] = []
    pending = specs
    with_config = True
    while pending:
        new_topics = [
            NewTopic(
                s.name,
                s.partitions,
                replication_factor,
                topic_configs=s.config if with_config else {},
            )
            for s in pending
        ]
        response = await admin.create_topics(new_topics)
        by_name = {spec.name: spec for spec in pending}
        rejected: list[TopicSpec] = []
        for name, code, *rest in response.topic_errors:
            spec = by_name[name]
            if code == 0:
                created.append(name)
            elif code == _TOPIC_ALREADY_EXISTS:
                pass  # created concurrently; checked by the caller
            elif code in _CONFIG_REJECTED and with_config and spec.config:
                rejected.append(spec)
            else:
                message = rest[0] if rest else None
                raise for_code(code)(f"cannot create topic {name}: {message}")
        if rejected:
            # Some brokers refuse topic configs; the topic matters more than its limit.
            log.warning(
                "broker rejected the config of %s; creating them without it",
                ", ".join(s.name for s in rejected),
            )
        pending, with_config = rejected, False
    return created


async def _wait_visible(admin: AIOKafkaAdminClient, wanted: dict[str, TopicSpec]) -> dict[str, int]:
    # Creation is asynchronous on a real cluster: wait until metadata shows them
    # all (the caller's timeout bounds this).
    while True:
        existing = await _partition_counts(admin, wanted)
        if existing.keys() >= wanted.keys():
            return existing
        await asyncio.sleep(_POLL_INTERVAL_S)
