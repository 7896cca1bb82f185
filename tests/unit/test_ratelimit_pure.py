"""Pure parts of rate limits and idempotency keys: headers, route groups, client IPs, keys."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from app.clientip import client_ip
from app.idempotency import fingerprint, valid_key
from app.ratelimit import (
    Decision,
    Limit,
    LimitState,
    policies_for,
    rate_limit_groups,
    response_headers,
    retry_after_seconds,
)
from contexts import REGISTRY
from infra.policies import RateLimitPolicy
from infra.settings import Settings

KNOWLEDGE = LimitState("knowledge", 40, 60, remaining=12, reset_us=2_100_000, retry_us=0)
DEFAULT = LimitState("default", 100, 60, remaining=70, reset_us=18_000_000, retry_us=0)


def test_the_draft_headers_list_every_stacked_limit_and_the_old_ones_name_the_tightest() -> None:
    headers = response_headers(Decision(True, (KNOWLEDGE, DEFAULT)))
    assert headers["RateLimit-Policy"] == '"knowledge";q=40;w=60, "default";q=100;w=60'
    assert headers["RateLimit"] == '"knowledge";r=12;t=3, "default";r=70;t=18'
    assert headers["RateLimit-Limit"] == "40"
    assert headers["RateLimit-Remaining"] == "12"
    assert headers["RateLimit-Reset"] == "3"
    assert "Retry-After" not in headers


def test_a_refusal_carries_retry_after_in_whole_seconds_rounded_up() -> None:
    refused = LimitState("knowledge", 40, 60, remaining=0, reset_us=60_000_000, retry_us=1_200_001)
    headers = response_headers(Decision(False, (refused, DEFAULT)))
    assert headers["Retry-After"] == "2"
    assert headers["RateLimit-Remaining"] == "0"


@pytest.mark.parametrize(("wait_us", "seconds"), [(0, 1), (1, 1), (1_000_000, 1), (1_000_001, 2)])
def test_retry_after_is_at_least_one_second(wait_us: int, seconds: int) -> None:
    assert retry_after_seconds(wait_us) == seconds


GROUPS = rate_limit_groups(REGISTRY.rate_limit_routes)


def test_writes_stack_two_limits_and_reads_one_and_health_none() -> None:
    assert policies_for("POST", "/v1/knowledge/documents", GROUPS) == ("knowledge", "default")
    assert policies_for("DELETE", "/v1/knowledge/documents/x", GROUPS) == ("knowledge", "default")
    assert policies_for("GET", "/v1/knowledge/documents", GROUPS) == ("default",)
    assert policies_for("GET", "/v1/commands", GROUPS) == ("default",)
    assert policies_for("POST", "/v1/agents/helper/runs", GROUPS) == ("orchestration", "default")
    assert policies_for("POST", "/v1/orchestration/plans", GROUPS) == ("orchestration", "default")
    assert policies_for("GET", "/v1/agents/helper/runs", GROUPS) == ("default",)
    assert policies_for("POST", "/v1/agentsmith", GROUPS) == ("default",)
    for path in ("/livez", "/readyz", "/metrics", "/docs", "/openapi.json", "/v1x"):
        assert policies_for("GET", path, GROUPS) == ()


def test_limit_keys_name_policy_scope_and_id() -> None:
    spec = RateLimitPolicy(limit=5, period_s=900)
    assert (
        Limit("login", spec, "account_ip", "ann|10.0.0.1").key == "rl:login:account_ip:ann|10.0.0.1"
    )


def _scope(peer: str, forwarded: str | None = None) -> dict[str, object]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"client": (peer, 1234), "headers": headers}


PROXY = (ipaddress.ip_network("10.0.0.0/8"),)


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    assert client_ip(_scope("203.0.113.9", "198.51.100.1"), ()) == "203.0.113.9"  # type: ignore[arg-type]
    assert client_ip(_scope("203.0.113.9", "198.51.100.1"), PROXY) == "203.0.113.9"  # type: ignore[arg-type]


def test_the_client_is_the_right_most_forwarded_address_that_is_not_a_proxy() -> None:
    scope = _scope("10.0.0.2", "6.6.6.6, 198.51.100.1, 10.0.0.3")
    assert client_ip(scope, PROXY) == "198.51.100.1"  # type: ignore[arg-type]
    assert client_ip(_scope("10.0.0.2", "not-an-ip"), PROXY) == "10.0.0.2"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "ok"),
    [
        ("a", True),
        ("x" * 255, True),
        ("with space ~", True),
        ("", False),
        ("x" * 256, False),
        ("tab\there", False),
        ("caf\u00e9", False),
        ("\x7f", False),
    ],
)
def test_idempotency_keys_are_1_to_255_printable_ascii_characters(key: str, ok: bool) -> None:
    assert valid_key(key) is ok


def test_the_fingerprint_tells_method_path_and_body_apart() -> None:
    base = fingerprint("POST", "/v1/a", b"{}")
    assert base == fingerprint("POST", "/v1/a", b"{}")
    assert (
        len(
            {
                base,
                fingerprint("DELETE", "/v1/a", b"{}"),
                fingerprint("POST", "/v1/b", b"{}"),
                fingerprint("POST", "/v1/a", b"{ }"),
                fingerprint("POST", "/v1/a{}", b""),
            }
        )
        == 5
    )


def test_policy_overrides_merge_over_the_defaults_field_by_field() -> None:
    settings = Settings(
        rate_limit_policies={"knowledge": {"limit": 5}, "search": {"limit": 9, "period_s": 1}}
    )
    policies = settings.rate_limits(REGISTRY.rate_limit_defaults)
    assert policies["knowledge"] == RateLimitPolicy(limit=5, period_s=60, cost=1, fail_open=True)
    assert policies["default"].limit == 100
    assert policies["login"] == RateLimitPolicy(limit=5, period_s=900, fail_open=False)
    assert policies["register"] == RateLimitPolicy(limit=3, period_s=3600, fail_open=False)
    assert policies["search"].limit == 9


def test_a_cost_over_the_limit_or_a_bad_cidr_is_refused_at_start() -> None:
    with pytest.raises(ValidationError):
        Settings(rate_limit_policies={"default": {"cost": 101}})
    with pytest.raises(ValidationError):
        Settings(trusted_proxies="10.0.0.0/33")
