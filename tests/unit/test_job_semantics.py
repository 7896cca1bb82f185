"""Job policies, backoff, header overrides, external-call timeouts and the retry wave order."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

import pytest

from events.jobs import ATTEMPTS_HEADER, BACKOFF_HEADER, DUE_HEADER, TIMEOUT_HEADER
from infra.policies import JobPolicy
from infra.settings import Settings
from workers import jobs
from workers.aggregate import DomainRuleError
from workers.items import Record
from workers.retries import traceback_digest
from workers.retry import next_wave


def test_exponential_backoff_doubles_up_to_its_cap_and_fixed_stays_put():
    exponential = JobPolicy(backoff="exponential", base_s=1, cap_s=5, jitter=False)
    assert [jobs.backoff_s(exponential, n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    fixed = JobPolicy(backoff="fixed", base_s=2, cap_s=5, jitter=False)
    assert [jobs.backoff_s(fixed, n) for n in (1, 2, 3)] == [2, 2, 2]


def test_jitter_draws_between_half_the_delay_and_all_of_it():
    policy = JobPolicy(backoff="exponential", base_s=1, cap_s=30, jitter=True)
    rng = random.Random(3)
    draws = [jobs.backoff_s(policy, 3, rng) for _ in range(200)]
    assert all(2 <= d <= 4 for d in draws)
    assert len({round(d, 6) for d in draws}) > 100


def test_a_command_types_policy_comes_from_the_settings_and_headers_override_it():
    settings = Settings(
        retry_attempts=4, job_policies={"IngestDocument": {"attempts": 6, "backoff": "fixed"}}
    )
    policies = jobs.Policies(settings)
    assert policies.resolve("DeleteDocument", {}).attempts == 4
    ingest = policies.resolve("IngestDocument", {})
    assert (ingest.attempts, ingest.backoff) == (6, "fixed")
    headers = {ATTEMPTS_HEADER: b"2", BACKOFF_HEADER: b"exponential", TIMEOUT_HEADER: b"0.5"}
    overridden = policies.resolve("IngestDocument", headers)
    assert (overridden.attempts, overridden.backoff, overridden.timeout_s) == (
        2,
        "exponential",
        0.5,
    )


def test_a_bad_job_header_leaves_the_policy_unchanged():
    policies = jobs.Policies(Settings(retry_attempts=3))
    assert policies.resolve("IngestDocument", {ATTEMPTS_HEADER: b"many"}).attempts == 3
    assert policies.resolve("IngestDocument", {ATTEMPTS_HEADER: b"0"}).attempts == 3


def test_a_job_policy_setting_with_an_unknown_field_is_refused():
    with pytest.raises(ValueError, match="retries"):
        Settings(job_policies={"IngestDocument": {"retries": 5}})


def test_an_external_call_past_its_timeout_is_a_transient_error_and_is_not_awaited():
    job = jobs.JobContext(policy=JobPolicy(timeout_s=0.1))
    started = time.perf_counter()
    with pytest.raises(jobs.ExternalCallTimeoutError, match=r"within 0\.1 s"):
        job.call(time.sleep, 5)
    assert time.perf_counter() - started < 2
    assert isinstance(jobs.ExternalCallTimeoutError("x"), jobs.TransientCommandError)
    assert job.call(lambda a, b: a + b, 2, 3) == 5


def test_any_error_of_an_external_call_is_transient_but_a_domain_rule_stays_permanent():
    job = jobs.JobContext()

    def backend_down() -> None:
        raise ConnectionRefusedError("embedder at :8081")

    def refuses() -> None:
        raise DomainRuleError("too large")

    with pytest.raises(jobs.ExternalCallError, match="ConnectionRefusedError") as raised:
        job.call(backend_down)
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    with pytest.raises(DomainRuleError):
        job.call(refuses)


def test_a_cancelled_job_stops_at_its_check_as_a_cancelled_rejection():
    cancelled = False
    job = jobs.JobContext(is_cancelled=lambda: cancelled)
    job.check_cancelled()
    cancelled = True
    with pytest.raises(jobs.CommandCancelledError) as raised:
        job.check_cancelled()
    assert raised.value.code == "cancelled"


def record(key: str, offset: int, due_in_s: float) -> Record:
    due = datetime.now(UTC) + timedelta(seconds=due_in_s)
    return Record(
        "t.retry", 0, offset, b"{}", key.encode(), None, ((DUE_HEADER, due.isoformat().encode()),)
    )


def test_a_retry_wave_runs_what_is_due_and_keeps_each_aggregate_behind_its_first_record():
    a1, b1, a2, c1, b2 = (
        record("a", 1, 60),  # not due: a2 must wait behind it
        record("b", 2, -1),
        record("a", 3, -1),
        record("c", 4, 60),
        record("b", 5, -1),
    )
    runnable, waiting = next_wave([a1, b1, a2, c1, b2], time.time(), cancelled=set())
    assert runnable == [b1, b2]
    assert waiting == [a1, a2, c1]
    # A cancelled record runs at once (to be rejected), whatever its due time.
    runnable, waiting = next_wave([a1, a2], time.time(), cancelled={0})
    assert runnable == [a1, a2]


def test_the_traceback_digest_names_the_frames_not_the_message():
    one = 'Traceback:\n  File "a.py", line 3, in decide\nTransientCommandError: backend down'
    other = 'Traceback:\n  File "a.py", line 3, in decide\nTransientCommandError: timeout 4'
    elsewhere = 'Traceback:\n  File "b.py", line 9, in embed\nTransientCommandError: backend down'
    assert traceback_digest(one) == traceback_digest(other)
    assert traceback_digest(one) != traceback_digest(elsewhere)
    assert len(traceback_digest(one)) == 16
