"""The stack's child processes: each in its own session, with a parent-death signal and a plan
that stops it within a bounded time (``infra.shutdown``)."""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import signal
    import subprocess
    from collections.abc import Callable
    from pathlib import Path

    from infra.shutdown import StopPlan

log = logging.getLogger("uait.stack")

_PR_SET_PDEATHSIG = 1


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    stop_plan: StopPlan
    """How it is stopped: its clean-shutdown signal first, then harder ones, then SIGKILL."""
    log_path: Path


def die_with_parent_hook(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when we die.

    The signal fires when the *thread* that forked exits, so it is only safe from
    the main thread; elsewhere we rely on ``stop()``/atexit alone.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    signum = int(sig)

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return hook
