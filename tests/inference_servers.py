"""A real ``mlx_lm.server`` as a subprocess on a local port, for tests of the HTTP backends.

It serves a model folder (the tiny offline model) with ``HF_HUB_CACHE`` pointed at a folder of
its own (``/v1/models`` fails with ``CacheNotFound`` while the cache folder is missing) and
``HF_HUB_OFFLINE=1`` (a request naming another model fails at once instead of downloading).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import TYPE_CHECKING

import httpx

from tests.e2e.fixtures import ServiceProcess, free_port, spawn

if TYPE_CHECKING:
    from pathlib import Path

START_TIMEOUT_S = 60.0


class MlxServer:
    """``mlx_lm server --model DIR`` on ``127.0.0.1:port``; the port stays the same on restart."""

    def __init__(self, model_dir: Path, work_dir: Path, port: int | None = None) -> None:
        self.model_dir = model_dir
        self.work_dir = work_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.service: ServiceProcess | None = None
        self._starts = 0

    def start(self, timeout_s: float = START_TIMEOUT_S) -> float:
        """Start it and wait until ``/v1/models`` lists the model; returns the seconds taken."""
        started = time.monotonic()
        hf_cache = self.work_dir / "hf-cache"
        hf_cache.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"HF_HUB_CACHE": str(hf_cache), "HF_HUB_OFFLINE": "1"}
        argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(self.model_dir)]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--log-level", "WARNING"]
        self._starts += 1
        self.service = spawn(f"mlx-server-{self.port}-{self._starts}", argv, env, self.work_dir)
        self._wait_ready(self.service, started + timeout_s)
        return time.monotonic() - started

    def _wait_ready(self, service: ServiceProcess, deadline: float) -> None:
        last: object = None
        while time.monotonic() < deadline:
            if (code := service.exited()) is not None:
                raise RuntimeError(f"mlx_lm.server exited with {code}:\n{service.tail()}")
            try:
                answer = httpx.get(f"{self.url}/v1/models", timeout=2.0)
                if answer.status_code == 200 and answer.json().get("data"):
                    return
                last = answer.status_code
            except (httpx.HTTPError, ValueError) as exc:
                last = exc
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mlx_lm.server did not answer in time ({last!r}):\n{service.tail()}")

    def kill(self) -> None:
        """SIGKILL, as a crash: no clean shutdown, open connections just break."""
        if self.service is not None:
            if self.service.exited() is None:
                self.service.process.send_signal(signal.SIGKILL)
                self.service.process.wait()
            self.service.stop()
            self.service = None

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None
