"""The ``inference_models`` read model: the registry as ``GET /v1/models`` lists it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from psycopg.types.json import Jsonb

from events.inference.events import ModelRegistered, ModelRetired, ModelUpdated

if TYPE_CHECKING:
    from psycopg import Cursor

    from projections.base import Envelope

SCHEMA = """
CREATE TABLE IF NOT EXISTS inference_models (
    name        text PRIMARY KEY,
    backend     text NOT NULL,
    spec        jsonb NOT NULL,
    aliases     text[] NOT NULL,
    tags        text[] NOT NULL,
    retired     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    position    bigint NOT NULL
);
"""

INDEXES = (
    "CREATE INDEX IF NOT EXISTS inference_models_aliases_idx"
    " ON inference_models USING gin (aliases);"
)


class ModelsProjection:
    name: ClassVar[str] = "inference.models"
    context: ClassVar[str] = "inference"
    version: ClassVar[int] = 1
    tables: ClassVar[tuple[str, ...]] = ("inference_models",)
    topics: ClassVar[frozenset[str]] = frozenset(
        {ModelRegistered.TYPE, ModelUpdated.TYPE, ModelRetired.TYPE}
    )

    def create(self, cur: Cursor[Any], *, indexes: bool = True) -> None:
        cur.execute(SCHEMA)
        if indexes:
            self.create_indexes(cur)

    def create_indexes(self, cur: Cursor[Any]) -> None:
        cur.execute(INDEXES)

    def apply(self, cur: Cursor[Any], batch: list[Envelope]) -> None:
        for env in batch:
            ev = env.event
            if isinstance(ev, ModelRegistered | ModelUpdated):
                spec = ev.spec
                cur.execute(
                    "INSERT INTO inference_models (name, backend, spec, aliases, tags, retired,"
                    " created_at, updated_at, position)"
                    " VALUES (%s, %s, %s, %s, %s, false, %s, %s, %s)"
                    " ON CONFLICT (name) DO UPDATE SET backend = EXCLUDED.backend,"
                    " spec = EXCLUDED.spec, aliases = EXCLUDED.aliases, tags = EXCLUDED.tags,"
                    " retired = false, updated_at = EXCLUDED.updated_at,"
                    " position = EXCLUDED.position",
                    (
                        ev.name,
                        spec.backend,
                        Jsonb(spec.model_dump(mode="json")),
                        spec.aliases,
                        spec.tags,
                        env.occurred_at,
                        env.occurred_at,
                        env.position,
                    ),
                )
            elif isinstance(ev, ModelRetired):
                cur.execute(
                    "UPDATE inference_models SET retired = true, updated_at = %s, position = %s"
                    " WHERE name = %s",
                    (env.occurred_at, env.position, ev.name),
                )
