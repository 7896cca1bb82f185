"""Backup and restore of an event store: compressed JSON lines with a checksum.

Format (gzip): a header line, one line per stored event in store order, and a trailer::

    {"format": "uait-store", "version": 1, "context": "<context>", "from_position": 0, ...}
    {"position": 1, "aggregate_id": "...", "aggregate_version": 1, "topic": "...", "state": "..."}
    ...
    {"end": true, "count": 2, "sha256": "<hex digest of every line before this one>"}

``state`` is the stored bytes as text (they are UTF-8 JSON), so the import writes back exactly
what was exported, at the same positions: projections rebuilt from the copy equal the original.
"""

from __future__ import annotations

import gzip
import hashlib
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

import orjson
from psycopg.sql import SQL, Identifier

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from infra.eventstore import EventStore

FORMAT = "uait-store"
VERSION = 1
PAGE = 5000


class BackupError(ValueError):
    """Raised when a backup file is damaged, of another format, or cannot go where asked."""


def export_store(
    store: EventStore,
    out: IO[bytes],
    *,
    from_position: int = 0,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write every event after ``from_position`` to ``out`` (gzip); returns how many."""
    digest = hashlib.sha256()
    count = 0
    with gzip.GzipFile(fileobj=out, mode="wb") as gz:

        def line(obj: dict[str, Any]) -> None:
            data = orjson.dumps(obj) + b"\n"
            digest.update(data)
            gz.write(data)

        line(
            {
                "format": FORMAT,
                "version": VERSION,
                "context": store.context,
                "from_position": from_position,
                "head": store.head(),
                "exported_at": datetime.now(UTC),
            }
        )
        position = from_position
        while True:
            notes = store.recorder.select_notifications(
                start=position, limit=PAGE, inclusive_of_start=False
            )
            if not notes:
                break
            for n in notes:
                line(
                    {
                        "position": n.id,
                        "aggregate_id": str(n.originator_id),
                        "aggregate_version": n.originator_version,
                        "topic": n.topic,
                        "state": n.state.decode("utf-8"),
                    }
                )
            count += len(notes)
            position = notes[-1].id
            if progress:
                progress(len(notes))
        gz.write(orjson.dumps({"end": True, "count": count, "sha256": digest.hexdigest()}) + b"\n")
    return count


def read_header(path: str) -> dict[str, Any]:
    with gzip.open(path, "rb") as gz:
        return _header(gz.readline())


def import_store(
    store: EventStore, path: str, *, progress: Callable[[int], None] | None = None
) -> int:
    """Load a backup into an EMPTY store of the same context, at the original positions.

    The whole file is checked (checksum, count, order) in one transaction with the inserts:
    a damaged file raises BackupError and leaves the store as empty as it was.
    """
    if store.head() != 0:
        raise BackupError(
            f"the {store.context} event store is not empty: import needs an empty one"
        )
    with gzip.open(path, "rb") as gz:
        lines = _lines(gz)
        header = _header(next(lines, b""))
        if header["context"] != store.context:
            raise BackupError(f"backup of context {header['context']!r}, not {store.context!r}")
        insert = SQL(
            "INSERT INTO {} (notification_id, originator_id, originator_version, topic, state) "
            "SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::bigint[], %s::text[], %s::bytea[])"
        ).format(Identifier(store.table))
        digest = hashlib.sha256()
        digest.update(header["_raw"])
        count = 0
        last = header["from_position"]
        with store.datastore.transaction(commit=True) as cur:
            cur.execute(SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(Identifier(store.table)))
            batch: list[dict[str, Any]] = []
            trailer: dict[str, Any] | None = None
            for raw in lines:
                row = _parse(raw)
                if row.get("end"):
                    trailer = row
                    break
                digest.update(raw)
                if row["position"] <= last:
                    raise BackupError(f"positions out of order at {row['position']}")
                last = row["position"]
                batch.append(row)
                if len(batch) >= PAGE:
                    count += _insert(cur, insert, batch, progress)
            count += _insert(cur, insert, batch, progress)
            if trailer is None:
                raise BackupError("the backup ends early (no trailer): truncated file?")
            if trailer["sha256"] != digest.hexdigest() or trailer["count"] != count:
                raise BackupError("checksum mismatch: the backup is damaged")
            # New appends continue after the imported positions.
            cur.execute(
                "SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), %s)",
                (store.table, max(last, 1)),
            )
    return count


def _insert(
    cur: Any, insert: Any, batch: list[dict[str, Any]], progress: Callable[[int], None] | None
) -> int:
    if not batch:
        return 0
    cur.execute(
        insert,
        (
            [r["position"] for r in batch],
            [r["aggregate_id"] for r in batch],
            [r["aggregate_version"] for r in batch],
            [r["topic"] for r in batch],
            [r["state"].encode("utf-8") for r in batch],
        ),
    )
    n = len(batch)
    batch.clear()
    if progress:
        progress(n)
    return n


def _lines(gz: Iterable[bytes]) -> Iterator[bytes]:
    try:
        yield from gz
    except (OSError, EOFError) as exc:
        raise BackupError(f"not a readable gzip backup: {exc}") from None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BackupError(f"a line is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BackupError("a line is not a JSON object")
    return value


def _header(raw: bytes) -> dict[str, Any]:
    header = _parse(raw) if raw else {}
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise BackupError(f"not a {FORMAT} v{VERSION} backup")
    header["_raw"] = raw
    return header
