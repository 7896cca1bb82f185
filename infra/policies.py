"""Policies the settings carry: rate limits per route group, and retries per command type."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

if TYPE_CHECKING:
    from collections.abc import Mapping


class RateLimitPolicy(BaseModel):
    """``limit`` units per ``period_s`` (GCRA: a full bucket allows ``limit`` at once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int = Field(ge=1, le=1_000_000)
    period_s: float = Field(gt=0, le=86_400)
    cost: int = Field(default=1, ge=1, description="units one request takes")
    fail_open: bool = Field(default=True, description="allow requests while Redis is down")

    @model_validator(mode="after")
    def _cost_fits(self) -> RateLimitPolicy:
        if self.cost > self.limit:
            raise ValueError(f"cost {self.cost} is over the limit {self.limit}: nothing would pass")
        return self


class RateLimitOverride(BaseModel):
    """Some fields of a policy, from ``UAIT_RATE_LIMIT_POLICIES``, merged over its defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    limit: int | None = Field(default=None, ge=1, le=1_000_000)
    period_s: float | None = Field(default=None, gt=0, le=86_400)
    cost: int | None = Field(default=None, ge=1)
    fail_open: bool | None = None


# The platform's own policies; each context declares its own beside them (the context registry).
# Logins (app.auth.throttle) fail closed: unthrottled guessing is the attack they exist to stop.
PLATFORM_RATE_LIMIT_POLICIES: dict[str, dict[str, Any]] = {
    "default": {"limit": 100, "period_s": 60, "cost": 1, "fail_open": True},
    # Agent runs and other orchestration: model inference behind each, so closed without Redis.
    "orchestration": {"limit": 30, "period_s": 60, "cost": 1, "fail_open": False},
    "login": {"limit": 5, "period_s": 900, "cost": 1, "fail_open": False},
}


def merge_rate_limits(
    defaults: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Mapping[str, Any]]
) -> dict[str, RateLimitPolicy]:
    """Every policy: ``overrides`` merged over ``defaults`` per policy and field.

    Raises ValueError naming the policy when a merged policy is incomplete or inconsistent.
    """
    merged: dict[str, dict[str, Any]] = {k: dict(v) for k, v in defaults.items()}
    for name, spec in overrides.items():
        merged[name] = {**merged.get(name, {}), **spec}
    policies = {}
    for name, spec in merged.items():
        try:
            policies[name] = RateLimitPolicy.model_validate(spec)
        except ValidationError as exc:
            raise ValueError(f"rate limit policy {name!r}: {exc.errors()[0]['msg']}") from None
    return policies


class JobPolicy(BaseModel):
    """How a command type is retried: attempts, backoff and the timeout of its external calls.

    ``attempts`` counts executions (3: the first try and two retries); the delay before retry
    ``n`` is ``base_s`` (fixed) or ``base_s * 2**(n-1)`` (exponential), at most ``cap_s``, and
    with ``jitter`` a uniform draw between half of it and all of it.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: int = Field(default=3, ge=1, le=100)
    backoff: Literal["fixed", "exponential"] = "exponential"
    base_s: float = Field(default=1.0, ge=0, le=3600)
    cap_s: float = Field(default=30.0, ge=0, le=3600)
    jitter: bool = True
    timeout_s: float = Field(default=30.0, gt=0, le=3600, description="per external call")
