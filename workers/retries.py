"""Where a deferred command goes: back to the retry topic, or past its last attempt, the DLQ.

Runs after the batch's event-store commit and before its offsets are committed, so a crash in
between redelivers the batch: a command is never lost between topics (it may be sent twice,
which its one outcome record makes harmless). Every step is recorded for the lifecycle API
(``command_log``: each attempt, its error, the next due time), the aggregates behind a command
in retry are parked (``workers.parking``), and a dead letter is indexed in ``dead_letters``.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from aiokafka import AIOKafkaProducer

from events.ids import uuid7
from events.jobs import (
    DEAD_LETTER_ID_HEADER,
    DUE_HEADER,
    ERROR_MESSAGE_HEADER,
    ERROR_TYPE_HEADER,
    FAILURES_HEADER,
    FIRST_FAILURE_HEADER,
    LAST_FAILURE_HEADER,
    ORIGINAL_OFFSET_HEADER,
    ORIGINAL_PARTITION_HEADER,
    ORIGINAL_TOPIC_HEADER,
    TRACEBACK_DIGEST_HEADER,
    WORKER_HEADERS,
)
from events.topics import command_topic, dead_letter_topic, retry_topic
from infra.topics import RETRY_HEADROOM_BYTES
from telemetry.metrics import DEAD_LETTERS, DLQ_SIZE, RETRIES
from workers import jobs

if TYPE_CHECKING:
    from collections.abc import Sequence

    from workers.aggregate_store import AggregateStore
    from workers.items import BatchReport, Deferral
    from workers.parking import Parking

log = logging.getLogger("uait.worker")

_MAX_ERROR = 1000
_LOG_ATTEMPT = """
INSERT INTO command_log (command_id, context, command_type, accepted_at, state, last_error,
                         next_attempt_at, attempt_history)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s::jsonb)
ON CONFLICT (command_id) DO UPDATE SET
    state = EXCLUDED.state,
    last_error = EXCLUDED.last_error,
    next_attempt_at = EXCLUDED.next_attempt_at,
    attempt_history = command_log.attempt_history || EXCLUDED.attempt_history
"""


def traceback_digest(text: str) -> str:
    """16 hex digits naming where an error came from (its frames, not its message)."""
    frames = [line.strip() for line in text.splitlines() if line.strip().startswith("File ")]
    last = text.strip().splitlines()[-1].split(":", 1)[0] if text.strip() else ""
    return hashlib.sha256("\n".join([*frames, last]).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Route:
    """One deferral's next stop."""

    deferral: Deferral
    failures: int
    topic: str
    headers: list[tuple[str, bytes]]
    due_at: datetime | None
    first_failure_at: datetime | None
    dead_letter_id: Any = None

    @property
    def dead(self) -> bool:
        return self.dead_letter_id is not None


def _iso(moment: datetime) -> bytes:
    return moment.isoformat().encode()


def _parse_time(raw: bytes | None) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(raw.decode())
    except ValueError:
        return None


class RetryDispatcher:
    def __init__(
        self,
        context: str,
        bootstrap: str,
        store: AggregateStore,
        parking: Parking,
        *,
        max_message_bytes: int = 1024 * 1024,
    ) -> None:
        self.context = context
        self.bootstrap = bootstrap
        self.max_message_bytes = max_message_bytes
        self.store = store
        self.parking = parking
        self.topic = command_topic(context)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        if self._producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=False,
                # A record as large as the command topic takes, plus the retry headers.
                max_request_size=self.max_message_bytes + RETRY_HEADROOM_BYTES,
            )
            await producer.start()
            self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    def route(self, deferral: Deferral) -> Route:
        item, record = deferral.item, deferral.item.record
        failures = item.failures + (1 if deferral.ran else 0)
        first = _parse_time(record.header(FIRST_FAILURE_HEADER))
        if deferral.ran and first is None:
            first = deferral.failed_at
        original = (record.header(ORIGINAL_TOPIC_HEADER) or record.topic.encode()).decode()
        headers = [(k, v) for k, v in record.headers if k not in WORKER_HEADERS]
        headers += [
            (FAILURES_HEADER, str(failures).encode()),
            (ORIGINAL_TOPIC_HEADER, original.encode()),
            (
                ORIGINAL_PARTITION_HEADER,
                record.header(ORIGINAL_PARTITION_HEADER) or str(record.partition).encode(),
            ),
            (
                ORIGINAL_OFFSET_HEADER,
                record.header(ORIGINAL_OFFSET_HEADER) or str(record.offset).encode(),
            ),
        ]
        if first is not None:
            headers.append((FIRST_FAILURE_HEADER, _iso(first)))
        last = (
            deferral.failed_at if deferral.ran else _parse_time(record.header(LAST_FAILURE_HEADER))
        )
        if last is not None:
            headers.append((LAST_FAILURE_HEADER, _iso(last)))
        if deferral.ran and failures >= item.policy.attempts:
            dead_id = uuid7()
            headers += [
                (ERROR_TYPE_HEADER, deferral.error_type.encode()),
                (ERROR_MESSAGE_HEADER, deferral.error[:_MAX_ERROR].encode()),
                (TRACEBACK_DIGEST_HEADER, traceback_digest(deferral.traceback).encode()),
                (DEAD_LETTER_ID_HEADER, str(dead_id).encode()),
            ]
            return Route(
                deferral, failures, dead_letter_topic(original), headers, None, first, dead_id
            )
        if deferral.ran:
            due = deferral.failed_at + timedelta(seconds=jobs.backoff_s(item.policy, failures))
        else:  # parked: it runs as soon as the command it follows is done
            due = deferral.failed_at
        headers.append((DUE_HEADER, _iso(due)))
        return Route(deferral, failures, retry_topic(self.topic), headers, due, first)

    async def dispatch(self, report: BatchReport) -> None:
        """Send every deferred command on, then record it; raises if any step failed."""
        routes = [self.route(d) for d in report.deferred]
        placed: list[tuple[int, int]] = []
        if routes:
            await self.start()
            assert self._producer is not None
            futures = [
                await self._producer.send(
                    r.topic,
                    r.deferral.item.record.value or b"",
                    key=r.deferral.item.record.key,
                    headers=r.headers,
                )
                for r in routes
            ]
            for metadata in await asyncio.gather(*futures):
                placed.append((metadata.partition, metadata.offset))
        if routes or report.released:
            await asyncio.to_thread(self._record, routes, placed, report.released)
        for r in routes:
            item = r.deferral.item
            if r.dead:
                DEAD_LETTERS.labels(r.topic, item.type).inc()
                log.error(
                    "%s dead-lettered to %s after %d attempt(s): %s: %s",
                    item.command_id,
                    r.topic,
                    r.failures,
                    r.deferral.error_type,
                    r.deferral.error,
                )
            else:
                RETRIES.labels(
                    self.context, item.type, "failed" if r.deferral.ran else "parked"
                ).inc()

    def _record(
        self,
        routes: list[Route],
        placed: list[tuple[int, int]],
        released: list[tuple[str, Any]],
    ) -> None:
        park = [
            (r.deferral.item.key, r.deferral.item.command_id)
            for r in routes
            if not r.dead and r.deferral.item.key is not None
        ]
        unpark = list(released) + [
            (r.deferral.item.key, r.deferral.item.command_id)
            for r in routes
            if r.dead and r.deferral.item.key is not None
        ]
        ran = [r for r in routes if r.deferral.ran]
        dead = [(r, p) for r, p in zip(routes, placed, strict=True) if r.dead]
        with self.store.datastore.get_connection() as conn, conn.transaction():
            self.parking.park(park, conn)
            self.parking.unpark(unpark, conn)
            if ran:
                with conn.cursor() as cur:
                    cur.executemany(_LOG_ATTEMPT, [self._attempt_row(r) for r in ran])
            for r, (partition, offset) in dead:
                self._index(conn, r, partition, offset)
            if dead:
                self._observe_size(conn)

    def _attempt_row(self, r: Route) -> tuple[Any, ...]:
        d = r.deferral
        entry = {
            "attempt": r.failures,
            "at": d.failed_at.isoformat(),
            "error_type": d.error_type,
            "error": d.error[:_MAX_ERROR],
            "next_attempt_at": r.due_at.isoformat() if r.due_at else None,
            "dead_lettered": r.dead,
        }
        envelope = d.item.envelope
        return (
            d.item.command_id,
            self.context,
            d.item.type,
            envelope.occurred_at if envelope else d.failed_at,
            "dead_lettered" if r.dead else "retrying",
            f"{d.error_type}: {d.error}"[:_MAX_ERROR],
            r.due_at,
            orjson.dumps([entry]).decode(),
        )

    def _index(self, conn: Any, r: Route, partition: int, offset: int) -> None:
        d, record = r.deferral, r.deferral.item.record
        headers = dict(r.headers)
        conn.execute(
            """
            INSERT INTO dead_letters (id, command_id, context, command_type, topic,
                kafka_partition, kafka_offset, dlq_topic, dlq_partition, dlq_offset, record_key,
                record_value, headers, error_type, error_message, traceback_digest, traceback,
                attempts, first_failure_at, last_failure_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (command_id) WHERE redriven_at IS NULL DO NOTHING
            """,
            (
                r.dead_letter_id,
                d.item.command_id,
                self.context,
                d.item.type,
                headers[ORIGINAL_TOPIC_HEADER].decode(),
                int(headers[ORIGINAL_PARTITION_HEADER]),
                int(headers[ORIGINAL_OFFSET_HEADER]),
                r.topic,
                partition,
                offset,
                record.key,
                record.value or b"",
                orjson.dumps({k: v.decode("utf-8", "replace") for k, v in r.headers}).decode(),
                d.error_type,
                d.error[:_MAX_ERROR],
                headers[TRACEBACK_DIGEST_HEADER].decode(),
                d.traceback[-8000:],
                r.failures,
                r.first_failure_at or d.failed_at,
                d.failed_at,
            ),
        )

    def _observe_size(self, conn: Any) -> None:
        observe_dlq_size(conn, (self.context,))

    async def watch_dlq_size(self, contexts: Sequence[str], interval_s: float = 30.0) -> None:
        """Keep the DLQ size gauge of ``contexts`` current (redrives and purges happen in other
        processes)."""
        while True:
            try:
                await asyncio.to_thread(self._refresh_size, contexts)
            except Exception as exc:  # the database may be down; the gauge keeps its last value
                log.warning("could not read the DLQ size: %s", exc)
            await asyncio.sleep(interval_s)

    def _refresh_size(self, contexts: Sequence[str]) -> None:
        with self.store.datastore.get_connection() as conn:
            observe_dlq_size(conn, contexts)


def observe_dlq_size(conn: Any, contexts: Sequence[str]) -> None:
    """Set the DLQ size gauge from the index (dead letters not redriven, per DLQ topic of
    ``contexts``, zero for those with none)."""
    rows = conn.execute(
        "SELECT dlq_topic, count(*) FILTER (WHERE redriven_at IS NULL) AS n"
        " FROM dead_letters GROUP BY dlq_topic"
    ).fetchall()
    sizes = {dead_letter_topic(command_topic(c)): 0 for c in contexts}
    for row in rows:
        sizes[row["dlq_topic"]] = row["n"]
    for topic, n in sizes.items():
        DLQ_SIZE.labels(topic).set(n)
