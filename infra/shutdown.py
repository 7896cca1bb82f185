"""Bounded stops of child processes: each is sent its stop signals in turn, and killed when the
last one's deadline passes. Every child is stopped at the same time, so the whole stop takes as
long as the slowest child's plan, never the sum of them; the log says which step each needed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import signal
    import subprocess
    import threading
    from collections.abc import Sequence

log = logging.getLogger("uait.shutdown")

_POLL_S = 0.05


@dataclass(frozen=True)
class StopPlan:
    """Send each signal in turn, waiting up to its seconds for the process to exit; then
    SIGKILL (which cannot be ignored)."""

    steps: tuple[tuple[signal.Signals, float], ...]

    @property
    def bound_s(self) -> float:
        """The longest this plan can take before the process is killed."""
        return sum(wait for _, wait in self.steps)


@dataclass
class _Stopping:
    name: str
    process: subprocess.Popen[bytes]
    plan: StopPlan
    step: int = -1
    step_deadline: float = 0.0
    started: float = 0.0


def stop_all(
    children: Sequence[tuple[str, subprocess.Popen[bytes], StopPlan]],
    *,
    hurry: threading.Event | None = None,
) -> dict[str, str]:
    """Stop every child at once, each by its plan; returns name -> the step that stopped it
    (``"SIGTERM"``, ``"SIGKILL"``, or ``"already exited"``). Once ``hurry`` is set (a second
    Ctrl-C), the children still running are killed."""
    now = time.monotonic()
    pending = [_Stopping(name, process, plan, started=now) for name, process, plan in children]
    outcome: dict[str, str] = {}
    for child in pending:
        if child.process.poll() is not None:
            outcome[child.name] = "already exited"
        else:
            _advance(child, now)
    pending = [c for c in pending if c.name not in outcome]
    while pending:
        now = time.monotonic()
        for child in list(pending):
            if child.process.poll() is not None:
                outcome[child.name] = _stopped(child, now)
                pending.remove(child)
            elif hurry is not None and hurry.is_set() and child.step < len(child.plan.steps):
                log.warning("%s (pid %d): stop hurried; killing it", child.name, child.process.pid)
                child.step = len(child.plan.steps)
                child.process.kill()
                child.step_deadline = float("inf")
            elif now >= child.step_deadline:
                _advance(child, now)
        if pending:
            time.sleep(_POLL_S)
    return outcome


def _advance(child: _Stopping, now: float) -> None:
    child.step += 1
    process = child.process
    if child.step < len(child.plan.steps):
        sig, wait_s = child.plan.steps[child.step]
        if child.step > 0:
            previous = child.plan.steps[child.step - 1]
            log.warning(
                "%s (pid %d) still running %.1f s after %s; sending %s",
                child.name,
                process.pid,
                previous[1],
                previous[0].name,
                sig.name,
            )
        _signal(process, sig)
        child.step_deadline = now + wait_s
        return
    last = child.plan.steps[-1] if child.plan.steps else None
    log.warning(
        "%s (pid %d) still running %.1f s after %s; killing it",
        child.name,
        process.pid,
        last[1] if last else 0.0,
        last[0].name if last else "no signal",
    )
    process.kill()
    # SIGKILL cannot be refused; only an uninterruptible sleep in the kernel delays it.
    child.step_deadline = float("inf")


def _stopped(child: _Stopping, now: float) -> str:
    steps = child.plan.steps
    step = "SIGKILL" if child.step >= len(steps) else steps[child.step][0].name
    took = now - child.started
    level = logging.INFO if child.step == 0 else logging.WARNING
    log.log(
        level,
        "stopped %s (pid %d, exit code %s) by %s in %.2f s",
        child.name,
        child.process.pid,
        child.process.returncode,
        step,
        took,
    )
    return step


def _signal(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited meanwhile: the next poll sees it
        process.send_signal(sig)
