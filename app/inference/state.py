"""What the inference routes read: the models read model (with its aliases)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from app.queries import ReadModel
from events.inference.commands import InferenceCommand

if TYPE_CHECKING:
    from app.deps import Closer, Deps

NAME = InferenceCommand.CONTEXT


class InferenceState(ReadModel):
    async def models(self) -> list[dict[str, Any]]:
        return await self.all(
            "SELECT name, aliases, created_at FROM inference_models"
            " WHERE NOT retired ORDER BY name",
            (),
        )

    async def model(self, name: str) -> dict[str, Any] | None:
        return await self.one(
            "SELECT name, aliases, created_at, spec FROM inference_models"
            " WHERE NOT retired AND (name = %s OR %s = ANY(aliases))"
            " ORDER BY name = %s DESC LIMIT 1",
            (name, name, name),
        )

    async def resolve(self, name: str) -> str | None:
        """The registered name of a model or alias (None: unknown or retired)."""
        row = await self.model(name)
        return str(row["name"]) if row else None


async def start(d: Deps) -> Closer | None:
    from app.runstream import close_run_streams

    d.extensions[NAME] = InferenceState(d.pool)

    async def close() -> None:
        await close_run_streams(d)

    return close


def inference(d: Deps) -> InferenceState:
    return cast("InferenceState", d.extensions[NAME])
