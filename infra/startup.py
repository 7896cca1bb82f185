"""Start-up steps every process shares: its endpoints are set, migrations, topics, the first
signing key."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from infra.migrate import migrate
from infra.topics import ensure_topics

if TYPE_CHECKING:
    from collections.abc import Sequence

    from infra.settings import Settings
    from infra.topics import TopicSpec

log = logging.getLogger("uait")


def require_endpoints(settings: Settings) -> None:
    missing = [
        name
        for name, value in (
            ("UAIT_KAFKA_BOOTSTRAP", settings.kafka_bootstrap),
            ("UAIT_DATABASE_URL", settings.database_url),
        )
        if not value
    ]
    if missing:
        raise SystemExit(
            f"{', '.join(missing)} not set: run `uait dev` for the embedded stack, "
            "or point these settings at your services"
        )


def prepare(settings: Settings, topics: Sequence[TopicSpec], *, need_kafka: bool = True) -> None:
    """Apply migrations and provision ``topics`` (both idempotent; every process runs them).

    The ingress passes ``need_kafka=False``: it must start, and answer queries and 503s, while
    the broker is down.
    """
    migrate(settings.database_url)
    try:
        asyncio.run(
            ensure_topics(
                settings.kafka_bootstrap,
                topics,
                replication_factor=settings.replication_factor,
                timeout_s=10 if need_kafka else 3,
            )
        )
    except Exception as exc:
        if need_kafka:
            raise
        log.warning("could not provision topics (%s); continuing without Kafka", exc)


def ensure_signing_key(settings: Settings) -> None:
    """Create the first JWT signing key when there is none (once, under a lock)."""
    import psycopg

    from security.keyring import Keyring
    from security.keystore import ensure_key

    value = settings.key_encryption_keys.get_secret_value()
    if not value:
        raise SystemExit(
            "UAIT_KEY_ENCRYPTION_KEYS is not set: `uait secrets generate` prints values for it and"
            " UAIT_IDENTITY_PEPPER (`uait dev` keeps its own)"
        )
    with psycopg.connect(settings.database_url) as conn:
        ensure_key(conn, Keyring.from_setting(value), alg=settings.jwt_algorithm)
