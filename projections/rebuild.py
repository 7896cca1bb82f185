"""Blue/green rebuild: build a projection anew in shadow tables, then swap them in atomically.

1. The new version is built in a schema of its own (``rebuild_<name>``) from the event store, in
   large batches, while the live tables keep serving and the live runner keeps them current. Its
   progress is tracked in the same transactions as its rows, so an interrupted rebuild resumes.
   The next page is read while the current one is written. A ``BulkLoadable`` projection
   bulk-loads: each page goes to its UNLOGGED staging tables (``stage``, by COPY), and once
   caught up one ``seal`` builds the live form (logged tables, derived columns and indexes,
   built once over the final rows). PostgreSQL empties UNLOGGED tables after a crash: an
   unlogged marker row tells a resumed rebuild whether its staged rows survived, and it starts
   over when they did not.
2. The swap is one transaction under the projection's advisory lock (the live runner takes it for
   every batch): the shadow tables catch up to the head, the live tables move to a retired schema,
   the shadow tables move to ``public``, and the tracking position moves to the head. Readers see
   the old tables or the new ones, never an empty or partial table.
3. The retired tables stay until the next rebuild; ``rollback`` catches them up and swaps back.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from eventsourcing.persistence import Tracking
from psycopg.sql import SQL, Identifier

from projections.base import BulkLoadable
from projections.control import read_state, write_state
from projections.pages import Page, PageReader
from projections.runner import POSITIONS_CHANNEL, to_envelopes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from eventsourcing.postgres import PostgresApplicationRecorder, PostgresTrackingRecorder
    from psycopg import Cursor

    from projections.base import Projection

log = logging.getLogger("uait.projections")

MARKER = "bulk_load_marker"


class NothingToRollBackError(RuntimeError):
    """Raised when a projection has no retired tables to return to."""


@dataclass(frozen=True)
class RebuildResult:
    events: int
    position: int
    seconds: float
    retired_schema: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _use(cur: Cursor[Any], schema: str) -> None:
    cur.execute(SQL("SET LOCAL search_path TO {}, public").format(Identifier(schema)))


def _lock(cur: Cursor[Any], name: str) -> None:
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cycle collector during the bulk load, and restore it after.

    Each page makes hundreds of thousands of short-lived objects without cycles; the collector's
    full passes over everything alive halved the read rate. Reference counting still frees them.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Rebuilder:
    def __init__(
        self,
        projection: Projection,
        recorder: PostgresApplicationRecorder,
        tracking: PostgresTrackingRecorder,
        *,
        batch_size: int = 10_000,
    ) -> None:
        self.projection = projection
        self.recorder = recorder
        self.tracking = tracking
        self.batch_size = batch_size
        self.datastore = recorder.datastore
        self.shadow = f"rebuild_{_slug(projection.name)}"
        self._shadow_tracking = f"{projection.name}@rebuild"
        self.reader = PageReader(projection, recorder, batch_size)
        self.bulk: BulkLoadable | None = (
            projection if isinstance(projection, BulkLoadable) else None
        )

    def head(self) -> int:
        return self.recorder.max_notification_id() or 0

    def rebuild(
        self,
        *,
        from_position: int = 0,
        progress: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> RebuildResult | None:
        """Build the shadow tables and swap them in; None when stopped early (resumable)."""
        started = time.perf_counter()
        position = self._prepare(from_position)
        staging = self._staging()
        events = 0
        with _collector_paused(), ThreadPoolExecutor(1, thread_name_prefix="rebuild-") as reader:
            # The next page is read and decoded while this one is written.
            pending = reader.submit(self.reader.read, position)
            while True:
                if should_stop():
                    pending.cancel()
                    log.info(
                        "%s: rebuild stopped at %d; run it again to resume", self.name, position
                    )
                    return None
                page = pending.result()
                if page.count == 0:
                    break
                pending = reader.submit(self.reader.read, page.last)
                self._write(page, staging=staging)
                position = page.last
                events += page.count
                if progress:
                    progress(page.count)
        with self.datastore.transaction(commit=True) as cur:
            _use(cur, self.shadow)
            cur.execute("SET LOCAL maintenance_work_mem = '256MB'")
            if self.bulk is None:
                self.projection.create_indexes(cur)  # once, over the loaded rows
            elif staging:
                self.bulk.seal(cur)  # once, over the staged rows
                cur.execute(
                    SQL("DROP TABLE {}.{}").format(Identifier(self.shadow), Identifier(MARKER))
                )
        retired, position, tail = self._swap(position)
        events += tail
        if progress and tail:
            progress(tail)
        return RebuildResult(events, position, time.perf_counter() - started, retired)

    @property
    def name(self) -> str:
        return self.projection.name

    def _prepare(self, from_position: int) -> int:
        """Start a shadow build, or resume the one already under way; returns its position."""
        state = read_state(self.datastore, self.name)
        if state.rebuild_schema == self.shadow and state.rebuild_version == self.projection.version:
            resumed = self.tracking.max_tracking_id(self._shadow_tracking)
            if resumed is not None and self._rows_survived():
                log.info("%s: resuming the rebuild at %d", self.name, resumed)
                return int(resumed)
        with self.datastore.transaction(commit=True) as cur:
            cur.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(self.shadow)))
            cur.execute(SQL("CREATE SCHEMA {}").format(Identifier(self.shadow)))
            _use(cur, self.shadow)
            if self.bulk is None:
                self.projection.create(cur, indexes=False)
            else:
                self.bulk.create(cur, indexes=False, bulk=True)
                cur.execute(
                    SQL("CREATE UNLOGGED TABLE {} (created_at timestamptz)").format(
                        Identifier(MARKER)
                    )
                )
                cur.execute(SQL("INSERT INTO {} VALUES (now())").format(Identifier(MARKER)))
            cur.execute(
                SQL("DELETE FROM {}.{} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema),
                    Identifier(self.tracking.tracking_table_name),
                ),
                (self._shadow_tracking,),
            )
            self.tracking._insert_tracking(cur, Tracking(self._shadow_tracking, from_position))
            write_state(
                cur,
                self.name,
                rebuild_schema=self.shadow,
                rebuild_version=self.projection.version,
            )
        return from_position

    def _staging(self) -> bool:
        """Whether the shadow build is still in its staging tables (not sealed yet)."""
        with self.datastore.get_connection() as conn:
            found = conn.execute(
                "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s",
                (self.shadow, MARKER),
            ).fetchone()
        return found is not None

    def _rows_survived(self) -> bool:
        """False when a crash emptied the UNLOGGED staging tables (their marker row is gone too)."""
        if not self._staging():
            return True  # sealed: logged tables, nothing lost
        with self.datastore.get_connection() as conn:
            marked = conn.execute(
                SQL("SELECT 1 FROM {}.{}").format(Identifier(self.shadow), Identifier(MARKER))
            ).fetchone()
        if marked is None:
            log.warning("%s: the server lost the unlogged staging tables; starting over", self.name)
        return marked is not None

    def _write(self, page: Page, cur: Cursor[Any] | None = None, *, staging: bool = False) -> None:
        def write(c: Cursor[Any]) -> None:
            _use(c, self.shadow)
            if page.batch and staging and self.bulk is not None:
                self.bulk.stage(c, page.batch)
            elif page.batch:
                self.projection.apply(c, page.batch)
            self.tracking._insert_tracking(c, Tracking(self._shadow_tracking, page.last))

        if cur is not None:
            write(cur)
            return
        with self.datastore.transaction(commit=True) as own:
            # Losing the last commits in a crash only moves the resume point back (the rows and
            # the position commit together): no need to wait for the WAL flush.
            own.execute("SET LOCAL synchronous_commit = off")
            write(own)

    def _apply_page(self, position: int, cur: Cursor[Any]) -> tuple[int, int]:
        page = self.reader.read(position)
        if page.count:
            self._write(page, cur)
        return page.count, page.last

    def _swap(self, position: int) -> tuple[str, int, int]:
        """Catch up under the lock and exchange the tables in one transaction."""
        state = read_state(self.datastore, self.name)
        retired = f"retired_{_slug(self.name)}"
        tail = 0
        with self.datastore.transaction(commit=True) as cur:
            _lock(cur, self.name)
            while True:  # the events that arrived during the build
                n, position = self._apply_page(position, cur)
                tail += n
                if n == 0:
                    break
            cur.execute("RESET search_path")
            live_position = self._live_position(cur)
            cur.execute(SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(Identifier(retired)))
            cur.execute(SQL("CREATE SCHEMA {}").format(Identifier(retired)))
            for table in self.projection.tables:
                cur.execute(
                    SQL("ALTER TABLE IF EXISTS public.{} SET SCHEMA {}").format(
                        Identifier(table), Identifier(retired)
                    )
                )
                cur.execute(
                    SQL("ALTER TABLE {}.{} SET SCHEMA public").format(
                        Identifier(self.shadow), Identifier(table)
                    )
                )
            cur.execute(SQL("DROP SCHEMA {} CASCADE").format(Identifier(self.shadow)))
            self._move_tracking(cur, position)
            write_state(
                cur,
                self.name,
                live_version=self.projection.version,
                previous_schema=retired,
                previous_position=live_position,
                previous_version=state.live_version,
                rebuild_schema=None,
                rebuild_version=None,
                swapped_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            cur.execute(
                SQL("DELETE FROM {}.{} WHERE application_name = %s").format(
                    Identifier(self.datastore.schema),
                    Identifier(self.tracking.tracking_table_name),
                ),
                (self._shadow_tracking,),
            )
            cur.execute("SELECT pg_notify(%s, %s)", (POSITIONS_CHANNEL, f"{self.name}:{position}"))
        log.info(
            "%s: swapped in the rebuilt tables at %d; old ones in %s", self.name, position, retired
        )
        return retired, position, tail

    def rollback(self) -> int:
        """Return to the retired tables: catch them up to the head and swap them back."""
        state = read_state(self.datastore, self.name)
        if not state.previous_schema or state.previous_position is None:
            raise NothingToRollBackError(f"{self.name} has no retired tables to return to")
        retired = state.previous_schema
        position = state.previous_position
        with self.datastore.transaction(commit=True) as cur:
            _lock(cur, self.name)
            cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (retired,))
            if cur.fetchone() is None:
                raise NothingToRollBackError(f"the retired schema {retired} is gone")
            while True:
                notes = self.recorder.select_notifications(
                    start=position, limit=self.batch_size, inclusive_of_start=False
                )
                if not notes:
                    break
                _use(cur, retired)
                batch = to_envelopes(self.projection, notes)
                if batch:
                    self.projection.apply(cur, batch)
                position = notes[-1].id
            cur.execute("RESET search_path")
            live_position = self._live_position(cur)
            swap = f"{retired}_swap"
            cur.execute(SQL("CREATE SCHEMA {}").format(Identifier(swap)))
            for table in self.projection.tables:
                for src, dst in (("public", swap), (retired, "public"), (swap, retired)):
                    cur.execute(
                        SQL("ALTER TABLE {}.{} SET SCHEMA {}").format(
                            Identifier(src), Identifier(table), Identifier(dst)
                        )
                    )
            cur.execute(SQL("DROP SCHEMA {}").format(Identifier(swap)))
            self._move_tracking(cur, position)
            write_state(
                cur,
                self.name,
                live_version=state.previous_version,
                previous_version=state.live_version,
                previous_position=live_position,
            )
            cur.execute("SELECT pg_notify(%s, %s)", (POSITIONS_CHANNEL, f"{self.name}:{position}"))
        return position

    def _live_position(self, cur: Cursor[Any]) -> int:
        cur.execute(
            SQL("SELECT notification_id FROM {}.{} WHERE application_name = %s").format(
                Identifier(self.datastore.schema), Identifier(self.tracking.tracking_table_name)
            ),
            (self.name,),
        )
        row = cur.fetchone()
        return int(row["notification_id"]) if row else 0

    def _move_tracking(self, cur: Cursor[Any], position: int) -> None:
        # Set, not advance: the live position may be ahead of or behind the rebuilt one.
        cur.execute(
            SQL(
                "INSERT INTO {}.{} (application_name, notification_id) VALUES (%s, %s) "
                "ON CONFLICT (application_name) DO UPDATE"
                " SET notification_id = EXCLUDED.notification_id"
            ).format(
                Identifier(self.datastore.schema), Identifier(self.tracking.tracking_table_name)
            ),
            (self.name, position),
        )
