"""Publish a command from the CLI (signed as the operator) and wait for its outcome."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import psycopg

if TYPE_CHECKING:
    from events.base import Command
    from infra.settings import Settings


def publish_command(settings: Settings, command: Command, actor: str) -> str:
    """Publish ``command`` onto its topic; returns its command id."""
    from infra.actors import operator_signer
    from infra.publisher import CommandPublisher

    async def send() -> str:
        async with CommandPublisher(
            settings.kafka_bootstrap,
            timeout_s=settings.publish_timeout_s,
            max_message_bytes=settings.kafka_max_message_bytes,
            signer=operator_signer(settings),
        ) as publisher:
            envelope = await publisher.publish(command, actor=actor)
            return str(envelope.message_id)

    return asyncio.run(send())


def wait_outcome(
    database_url: str, table: str, command_id: str, wait_s: float
) -> tuple[str, str] | None:
    """(status, reason) of a command once its outcome is projected; None after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            try:
                row = conn.execute(
                    f"SELECT status, COALESCE(reason, '') FROM {table} WHERE command_id = %s",
                    (command_id,),
                ).fetchone()
            except psycopg.errors.UndefinedTable:
                row = None
            if row is not None:
                return str(row[0]), str(row[1])
            time.sleep(0.2)
    return None
