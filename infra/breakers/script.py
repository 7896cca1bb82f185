"""The breaker's Lua script (``breaker.lua``) and its reply: every change of a breaker's state is
one atomic step of this script, on the clock of Redis."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infra.breakers.model import BreakerState

LUA = (Path(__file__).with_name("breaker.lua")).read_text(encoding="utf-8")
LUA_SHA = hashlib.sha1(LUA.encode(), usedforsecurity=False).hexdigest()

REGISTRY_KEY = "uait:breakers"
CHANGES_KEY = "uait:breakers:changes"
"""A capped stream of every state change, written by the script (see app.auth.breaker_audit)."""


@dataclass(frozen=True)
class Reply:
    from_state: BreakerState | None
    state: BreakerState
    epoch: int
    allowed: bool
    probe: bool
    reason: str
    calls: int
    failures: int
    slow: int
    opened_at_ms: int
    now_ms: int
    probes_in_flight: int
    probe_successes: int

    @classmethod
    def parse(cls, raw: list[Any]) -> Reply:
        text = [x.decode() if isinstance(x, bytes) else x for x in raw]
        return cls(
            from_state=BreakerState(text[0]) if text[0] else None,
            state=BreakerState(text[1]),
            epoch=int(text[2]),
            allowed=bool(int(text[3])),
            probe=bool(int(text[4])),
            reason=str(text[5]),
            calls=int(text[6]),
            failures=int(text[7]),
            slow=int(text[8]),
            opened_at_ms=int(text[9]),
            now_ms=int(text[10]),
            probes_in_flight=int(text[11]),
            probe_successes=int(text[12]),
        )


@dataclass(frozen=True)
class Permit:
    epoch: int
    probe: bool


def ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def when(ms: int) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if ms else None
