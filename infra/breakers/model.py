"""What a breaker is: its states, its configuration, its status, and the error of a refused call."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from infra.settings import Settings

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.:-]{0,99}$"


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    FORCED_CLOSED = "forced_closed"

    @property
    def code(self) -> int:
        """The value of the ``uait_breaker_state`` gauge."""
        return _CODES[self]


_CODES = {
    BreakerState.CLOSED: 0,
    BreakerState.OPEN: 1,
    BreakerState.HALF_OPEN: 2,
    BreakerState.FORCED_OPEN: 3,
    BreakerState.FORCED_CLOSED: 4,
}


class BreakerOpenError(Exception):
    """The breaker is open (or its half-open probes are taken): the call was not made."""

    def __init__(self, name: str, state: BreakerState, retry_at: datetime | None = None) -> None:
        super().__init__(f"circuit breaker {name!r} is {state.value}")
        self.name = name
        self.state = state
        self.retry_at = retry_at


class BreakerConfig(BaseModel):
    """How a breaker judges its calls. Rates are percentages of the calls in the window."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window_size: int = Field(default=20, ge=1, le=1000, description="the last N calls count")
    min_calls: int = Field(default=10, ge=1, description="no opening below this many calls")
    failure_rate: float = Field(default=50.0, gt=0, le=100, description="percent failed: open")
    slow_call_s: float = Field(default=10.0, gt=0, description="a call this slow is slow")
    slow_call_rate: float = Field(default=80.0, gt=0, le=100, description="percent slow: open")
    call_timeout_s: float | None = Field(default=30.0, gt=0, description="cut after; None = never")
    open_wait_s: float = Field(default=30.0, gt=0, description="time open before half-open")
    half_open_probes: int = Field(default=3, ge=1, le=100, description="trial calls at a time")
    fail_open: bool = Field(default=True, description="call unguarded while Redis is down")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> BreakerConfig:
        """The ``UAIT_BREAKER_*`` defaults, with per-breaker overrides."""
        values: dict[str, Any] = {
            "window_size": settings.breaker_window_size,
            "min_calls": settings.breaker_min_calls,
            "failure_rate": settings.breaker_failure_rate,
            "slow_call_s": settings.breaker_slow_call_s,
            "slow_call_rate": settings.breaker_slow_call_rate,
            "call_timeout_s": settings.breaker_call_timeout_s,
            "open_wait_s": settings.breaker_open_wait_s,
            "half_open_probes": settings.breaker_half_open_probes,
        }
        return cls(**(values | overrides))

    @property
    def probe_lease_s(self) -> float:
        """How long a probe slot is held before it is presumed lost (its caller died)."""
        return (self.call_timeout_s or self.slow_call_s * 6) + 5.0


class BreakerStatus(BaseModel):
    """A breaker's state and window, as stored in Redis."""

    name: str
    state: BreakerState
    state_code: int
    calls: int = Field(description="calls in the window")
    failures: int
    slow: int
    failure_rate: float = Field(description="percent of the calls in the window")
    slow_call_rate: float
    probes_in_flight: int
    probe_successes: int
    opened_at: datetime | None
    half_open_at: datetime | None = Field(description="when an open breaker admits probes")
    config: dict[str, Any] | None = Field(description="as last registered by a caller")
