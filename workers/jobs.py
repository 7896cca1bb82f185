"""Job semantics of a command: its retry policy, its external calls' timeout, its cancel token.

A decider signals a failure that may pass on retry by raising ``TransientCommandError`` (or by
letting an external call time out, or hit an open breaker). The command then gets no outcome in
this batch: it goes to the retry topic and comes back after its backoff. Permanent failures stay
``DomainRuleError`` rejections. Deciders reach the running command's job through ``current()``::

    job = jobs.current()
    vectors = job.call(embedder.embed, chunks)   # cut after the policy's timeout_s
    job.check_cancelled()                        # stops here once the command was cancelled
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import ValidationError

from events.jobs import ATTEMPTS_HEADER, BACKOFF_HEADER, TIMEOUT_HEADER
from infra.breakers import BreakerOpenError
from infra.policies import JobPolicy
from workers.aggregate import DomainRuleError

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Mapping

    from infra.settings import Settings

log = logging.getLogger("uait.worker")

T = TypeVar("T")


class TransientCommandError(Exception):
    """Raised by a decider when a command may succeed on a later attempt (e.g. a backend down)."""


class ExternalCallError(TransientCommandError):
    """Raised when an external call of a decider fails (the backend's error is its cause)."""


class ExternalCallTimeoutError(ExternalCallError):
    """Raised when an external call of a decider runs past its job's timeout."""


class CommandCancelledError(DomainRuleError):
    """Raised at a cancel check once the command was cancelled: it is rejected as cancelled."""

    code = "cancelled"


TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientCommandError, BreakerOpenError)
"""Errors of a decider that send its command to the retry path instead of rejecting it."""

# Threads for external calls: a call cut by its timeout keeps its thread until it returns, so
# the pool is bounded and a hung backend cannot take every thread of the worker.
_calls = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="uait-call")


def backoff_s(policy: JobPolicy, failures: int, rng: random.Random | None = None) -> float:
    """The delay before the attempt that follows ``failures`` failed ones (1, 2, ...)."""
    if policy.backoff == "fixed":
        delay = policy.base_s
    else:
        delay = policy.base_s * 2 ** max(failures - 1, 0)
    delay = min(delay, policy.cap_s)
    if policy.jitter and delay > 0:
        # Equal jitter: spread retries of a burst apart without ever retrying at once.
        delay = (rng or random).uniform(delay / 2, delay)
    return delay


class Policies:
    """The job policy of each command type, overridable by the headers of one message."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._by_type: dict[str, JobPolicy] = {}

    def for_type(self, command_type: str) -> JobPolicy:
        policy = self._by_type.get(command_type)
        if policy is None:
            policy = self._by_type[command_type] = self.settings.job_policy(command_type)
        return policy

    def resolve(self, command_type: str, headers: Mapping[str, bytes]) -> JobPolicy:
        policy = self.for_type(command_type)
        override: dict[str, Any] = {}
        for header, name in (
            (ATTEMPTS_HEADER, "attempts"),
            (BACKOFF_HEADER, "backoff"),
            (TIMEOUT_HEADER, "timeout_s"),
        ):
            if header in headers:
                override[name] = headers[header].decode("utf-8", "replace")
        if not override:
            return policy
        try:
            return JobPolicy.model_validate({**policy.model_dump(), **override})
        except ValidationError as exc:
            # A bad header must not change how the command runs: keep the type's policy.
            log.warning("ignoring job headers %s of a %s: %s", override, command_type, exc)
            return policy


@dataclass
class JobContext:
    """What a decider may ask about the command it is deciding."""

    policy: JobPolicy = field(default_factory=JobPolicy)
    command_id: uuid.UUID | None = None
    """The command being decided (None outside a decision)."""
    attempt: int = 1
    """This execution's number: 1 for the first try."""
    is_cancelled: Callable[[], bool] = lambda: False

    def check_cancelled(self) -> None:
        """Raise CommandCancelledError once the command was cancelled (a cooperative stop)."""
        if self.is_cancelled():
            raise CommandCancelledError("cancelled on request")

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None) -> T:
        """Run an external call, cut after ``timeout_s`` (default: the policy's).

        The event-store transaction is never inside this: only the call is timed out, and a
        call that outlives its timeout is abandoned (its result is dropped), never awaited.
        Any error of the call (a backend down, an open breaker) is transient: it becomes an
        ``ExternalCallError`` and the command is retried; a ``DomainRuleError`` stays one.
        """
        self.check_cancelled()
        limit = self.policy.timeout_s if timeout_s is None else timeout_s
        future = _calls.submit(contextvars.copy_context().run, fn, *args)
        try:
            return future.result(timeout=limit)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ExternalCallTimeoutError(
                f"{getattr(fn, '__name__', 'call')} did not answer within {limit:g} s"
            ) from None
        except (DomainRuleError, TransientCommandError):
            raise
        except Exception as exc:
            raise ExternalCallError(
                f"{getattr(fn, '__name__', 'call')} failed: {type(exc).__name__}: {exc}"
            ) from exc


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("uait_job")


def current() -> JobContext:
    """The job of the command being decided (a default one outside a decision)."""
    try:
        return _current.get()
    except LookupError:
        return JobContext()


def enter(job: JobContext) -> contextvars.Token[JobContext]:
    return _current.set(job)


def leave(token: contextvars.Token[JobContext]) -> None:
    _current.reset(token)
