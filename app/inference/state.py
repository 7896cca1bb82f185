"""What the inference routes read: the models read model (with its aliases)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, cast

from app.queries import ReadModel
from events.inference.commands import InferenceCommand

if TYPE_CHECKING:
    from app.deps import Closer, Deps

NAME = InferenceCommand.CONTEXT


class InferenceState(ReadModel):
    RESOLVED_S = 2.0
    """How long a known name's resolution is reused (one query less per request). The worker
    decides against the registry itself, so a model retired meanwhile is refused there."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resolved: dict[str, tuple[float, str]] = {}

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
        """The registered name of a model or alias (None: unknown or retired). A known name is
        remembered for ``RESOLVED_S``; an unknown one is looked up every time (a model just
        registered is usable at once)."""
        now = time.monotonic()
        hit = self._resolved.get(name)
        if hit is not None and now - hit[0] < self.RESOLVED_S:
            return hit[1]
        row = await self.model(name)
        if row is None:
            self._resolved.pop(name, None)
            return None
        if len(self._resolved) > 10_000:
            self._resolved.clear()
        self._resolved[name] = (now, str(row["name"]))
        return str(row["name"])


async def start(d: Deps) -> Closer | None:
    from app.runstream import close_run_streams

    d.extensions[NAME] = InferenceState(d.pool)

    async def close() -> None:
        await close_run_streams(d)

    return close


def inference(d: Deps) -> InferenceState:
    return cast("InferenceState", d.extensions[NAME])
