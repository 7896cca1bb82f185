"""Operational state of projections: running, paused, failed (with the event and the error).

Changes are NOTIFYed on ``uait_projection_control`` so a running projection reacts at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from psycopg.rows import dict_row

if TYPE_CHECKING:
    from eventsourcing.postgres import PostgresDatastore

CONTROL_CHANNEL = "uait_projection_control"
State = Literal["running", "paused", "failed"]


class UnknownProjectionError(LookupError):
    """Raised when a command names a projection that does not exist."""


@dataclass(frozen=True)
class ProjectionState:
    name: str
    state: State = "running"
    error: str | None = None
    failed_position: int | None = None
    failed_event_type: str | None = None
    live_version: int | None = None
    previous_schema: str | None = None
    previous_position: int | None = None
    previous_version: int | None = None
    rebuild_schema: str | None = None
    rebuild_version: int | None = None


def read_state(datastore: PostgresDatastore, name: str) -> ProjectionState:
    with datastore.get_connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT name, state, error, failed_position, failed_event_type, live_version,"
            " previous_schema, previous_position, previous_version, rebuild_schema,"
            " rebuild_version"
            " FROM projection_state WHERE name = %s",
            (name,),
        )
        row = cur.fetchone()
    return ProjectionState(**row) if row else ProjectionState(name=name)


def write_state(cur: Any, name: str, **fields: Any) -> None:
    """Upsert some fields of a projection's state (in the caller's transaction) and NOTIFY."""
    columns = ["name", *fields]
    values = [name, *fields.values()]
    updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in fields) or "name = EXCLUDED.name"
    cur.execute(
        f"INSERT INTO projection_state ({', '.join(columns)}, updated_at)"
        f" VALUES ({', '.join(['%s'] * len(values))}, now())"
        f" ON CONFLICT (name) DO UPDATE SET {updates}, updated_at = now()",
        values,
    )
    cur.execute("SELECT pg_notify(%s, %s)", (CONTROL_CHANNEL, name))


def set_state(datastore: PostgresDatastore, name: str, state: State) -> None:
    """Pause, resume, or retry (running again, error cleared) a projection."""
    with datastore.transaction(commit=True) as cur:
        extra: dict[str, Any] = {}
        if state == "running":
            extra = {"error": None, "failed_position": None, "failed_event_type": None}
        write_state(cur, name, state=state, **extra)
