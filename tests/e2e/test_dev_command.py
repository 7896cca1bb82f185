"""`uait dev`: the whole system in one command, and a clean Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import httpx
import psutil
import pytest

from tests.e2e.fixtures import bootstrap_admin

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_uait_dev_serves_the_api_and_ctrl_c_or_sigterm_stops_every_process(tmp_path, stop):
    port = free_port()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("UAIT_KAFKA_BOOTSTRAP", "UAIT_DATABASE_URL", "UAIT_REDIS_URL")
    }
    env.update({"UAIT_DATA_DIR": str(tmp_path / "data"), "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000"})
    log = (tmp_path / "dev.log").open("w+b")
    dev = subprocess.Popen(
        [sys.executable, "-m", "uait", "dev", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert dev.poll() is None, "uait dev exited early"
            try:
                if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the ingress never answered"
            time.sleep(0.2)
        children = psutil.Process(dev.pid).children(recursive=True)
        assert len(children) >= 6, children  # 3 services + worker, projections, ingress

        # The first admin, as the printed hint says: with the running stack's dev.env.
        dev_env = dict(
            line.split("=", 1) for line in (tmp_path / "data" / "dev.env").read_text().splitlines()
        )
        assert {"UAIT_DATABASE_URL", "UAIT_KAFKA_BOOTSTRAP", "UAIT_KEY_ENCRYPTION_KEYS"} <= set(
            dev_env
        )
        admin = bootstrap_admin(base, {**env, **dev_env})

        doc = f"dev-{uuid.uuid4().hex[:8]}"
        answer = httpx.post(
            f"{base}/v1/knowledge/documents",
            json={"document_id": doc, "title": "Dev", "text": "started by one command"},
            headers={"Prefer": "wait=30", **admin.headers},
            timeout=40,
        )
        assert answer.status_code == 201, answer.text
        position = answer.json()["position"]
        found = httpx.get(
            f"{base}/v1/knowledge/search",
            params={"q": "command", "after": position},
            headers=admin.headers,
            timeout=40,
        )
        assert doc in [r["document_id"] for r in found.json()["results"]]

        # It serves a real model: the tiny one here (the Gemma package is `make run`'s).
        deadline = time.monotonic() + 120
        while True:
            models = httpx.get(f"{base}/v1/models", headers=admin.headers, timeout=10).json()
            names = [m["id"] for m in models["data"]]
            if names:
                break
            assert time.monotonic() < deadline, "uait dev registered no model"
            time.sleep(0.5)
        reply = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": names[0], "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 8},
            headers=admin.headers,
            timeout=120,
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["finish_reason"] in ("stop", "length")

        if stop == "ctrl-c":  # Ctrl-C in a terminal signals the whole process group
            os.killpg(dev.pid, signal.SIGINT)
        else:  # a process manager signals uait dev alone: it must not leave its children behind
            dev.send_signal(signal.SIGTERM)
        assert dev.wait(timeout=60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
        log.seek(0)
        output = log.read().decode(errors="replace")
        print(output[-4000:])
    assert re.search(r"API\s+http://127\.0\.0\.1:\d+", output), "the URLs were not printed"
    assert "Kafka" in output
    assert "Postgres" in output
