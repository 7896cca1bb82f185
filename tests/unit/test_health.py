from __future__ import annotations

import time

from telemetry.health import CheckResult, Health, timed


def test_the_worst_check_decides_the_status_and_failures_carry_their_reason():
    def broken() -> None:
        raise ConnectionError("refused")

    health = Health(
        "svc",
        {
            "a": lambda: timed(lambda: None),
            "b": lambda: timed(lambda: "behind"),
            "c": lambda: timed(broken),
        },
    )
    body = health.report()
    assert body["status"] == "fail"
    assert body["checks"]["a:responseTime"][0]["status"] == "pass"
    assert body["checks"]["b:responseTime"][0] == {
        **body["checks"]["b:responseTime"][0],
        "status": "warn",
        "output": "behind",
    }
    assert "ConnectionError: refused" in body["checks"]["c:responseTime"][0]["output"]


def test_a_warning_never_fails_readiness_and_results_are_cached_for_a_second():
    calls = []

    def slow_warning() -> CheckResult:
        calls.append(1)
        return CheckResult("warn", "lagging", 1.0)

    health = Health("svc", {"projections": slow_warning})
    assert health.report()["status"] == "warn"
    health.report()
    assert len(calls) == 1
    time.sleep(1.05)
    health.report()
    assert len(calls) == 2
