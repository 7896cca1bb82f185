"""Real processes for end-to-end tests (a plugin of tests/conftest.py, for tests/security too):
worker, projections and ingress, as `uait dev` runs them.

Each process is ``python -m uait ...`` against the session's ``endpoints``; its stdout and
stderr go to a log file whose tail is printed when start-up fails and attached to the report of
every failing e2e test.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.conftest import TEST_SECRETS

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from infra.stack import Endpoints

REPO_ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "uait"]
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
WARM_UP_WAIT_S = 30

_PR_SET_PDEATHSIG = 1
_running: list[ServiceProcess] = []
_extra_ingress_numbers = itertools.count(1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # A SIGKILLed pytest must not leave workers consuming from the next session's broker.
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


@dataclass
class ServiceProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    base_url: str = ""  # set for an ingress
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def exited(self) -> int | None:
        return self.process.poll()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log_path}: {exc})"
        return "\n".join(text.splitlines()[-lines:]) or "(empty)"

    def describe(self) -> str:
        state = "running" if self.exited() is None else f"exited with {self.exited()}"
        return f"--- {self.name} (pid {self.process.pid}, {state}), end of {self.log_path}:\n" + (
            self.tail()
        )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self in _running:
            _running.remove(self)


def spawn(name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> ServiceProcess:
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches pytest only; teardown stops the children
            preexec_fn=_die_with_parent
            if threading.current_thread() is threading.main_thread()
            else None,
        )
    service = ServiceProcess(name, process, log_path, env=env)
    _running.append(service)
    return service


def wait_live(service: ServiceProcess, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until ``GET /livez`` answers 200; fails early if the process exits."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        code = service.exited()
        if code is not None:
            raise RuntimeError(f"{service.name} exited with code {code} before answering /livez")
        try:
            response = httpx.get(f"{service.base_url}/livez", timeout=2.0)
            if response.status_code == 200:
                return
            last = response.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise RuntimeError(f"{service.name} did not answer /livez within {timeout_s:.0f} s ({last!r})")


def start_ingress_process(name: str, env: dict[str, str], log_dir: Path) -> ServiceProcess:
    """`uait ingress` on a free port, answering /livez."""
    for attempt in range(3):
        port = free_port()
        argv = [*CLI, "ingress", "--host", "127.0.0.1", "--port", str(port)]
        service = spawn(name if attempt == 0 else f"{name}-{attempt}", argv, env, log_dir)
        service.base_url = f"http://127.0.0.1:{port}"
        try:
            wait_live(service)
        except RuntimeError:
            # The port may have been taken between the probe and uvicorn's bind: try another.
            if (
                service.exited() is None
                or attempt == 2
                or "address already in use" not in service.tail().lower()
            ):
                raise
            service.stop()
            continue
        return service
    raise AssertionError("unreachable")


def _fail_with_logs(message: str, services: list[ServiceProcess]) -> None:
    logs = "\n".join(s.describe() for s in services)
    print(f"{message}\n{logs}", file=sys.stderr)
    pytest.fail(f"{message}\n{logs}", pytrace=False)


@dataclass
class Services:
    worker: ServiceProcess
    projections: ServiceProcess
    ingress: ServiceProcess
    env: dict[str, str]
    log_dir: Path
    admin_email: str = ""
    admin_password: str = ""
    admin_id: str = ""
    api_key: str = ""
    """An admin's API key with every scope: what the suite's clients send by default."""

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}

    @property
    def base_url(self) -> str:
        return self.ingress.base_url


@pytest.fixture(scope="session")
def e2e_env(endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every e2e process: the session's services and quick group joins."""
    return {
        # Where the dev notifier's outbox (reset and verification messages) lives.
        "UAIT_DATA_DIR": str(tmp_path_factory.mktemp("uait-data")),
        **os.environ,
        "UAIT_KAFKA_BOOTSTRAP": endpoints.kafka_bootstrap,
        "UAIT_DATABASE_URL": endpoints.database_url,
        "UAIT_REDIS_URL": endpoints.redis_url,
        "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000",
        # The suite sends far more than a client's share from one address; the rate-limit
        # tests run their own ingresses with limits and per-test client addresses.
        "UAIT_RATE_LIMIT_EXEMPT": "127.0.0.0/8,::1/128",
        # The suite logs its admin in once per test that needs a fresh key: far over the
        # login policy's 5 per 15 minutes. The throttling tests run their own ingresses.
        "UAIT_RATE_LIMIT_POLICIES": '{"login": {"limit": 100000, "period_s": 900}}',
        "UAIT_WORKER_METRICS_PORT": str(free_port()),
        "UAIT_PROJECTIONS_METRICS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
        **TEST_SECRETS,
        # Cheap argon2 for the suite's many logins; `uait bench auth` measures the defaults.
        "UAIT_ARGON2_MEMORY_KIB": "8192",
        "UAIT_ARGON2_TIME_COST": "1",
    }


@pytest.fixture(scope="session")
def services(
    e2e_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    """Worker, projections and ingress, started like `uait dev` does, and proven to work.

    Ready means: the ingress answers /livez, and one document ingested over HTTP with
    ``Prefer: wait`` comes back 201, so the worker has joined its group and the projections
    are following the store.
    """
    log_dir = tmp_path_factory.mktemp("e2e-logs")
    try:
        worker = spawn("worker", [*CLI, "worker"], e2e_env, log_dir)
        projections = spawn("projections", [*CLI, "projections", "run"], e2e_env, log_dir)
        ingress = start_ingress_process("ingress", e2e_env, log_dir)
        ready = Services(worker, projections, ingress, e2e_env, log_dir)
        _create_admin(ready)
        _warm_up(ready)
    except Exception as exc:
        failed = list(_running)
        for service in failed:
            service.stop()
        _fail_with_logs(f"e2e services did not start: {exc}", failed)
    try:
        yield ready
    finally:
        for service in (ingress, worker, projections):
            service.stop()


@dataclass(frozen=True)
class Admin:
    user_id: str
    email: str
    password: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key}


def bootstrap_admin(base_url: str, env: dict[str, str]) -> Admin:
    """The first admin from the command line (as an operator does), then an admin API key."""
    email = f"admin-{uuid.uuid4().hex[:8]}@example.test"
    password = f"suite {uuid.uuid4().hex}"
    result = subprocess.run(
        [*CLI, "users", "create-admin", "--email", email, "--name", "Suite Admin",
         "--password-stdin"],
        input=password + "\n", capture_output=True, text=True, env=env, cwd=REPO_ROOT,
        timeout=START_TIMEOUT_S * 2, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"create-admin failed: {result.stdout} {result.stderr}")
    user_id = result.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while True:
            login = client.post("/v1/auth/login", json={"email": email, "password": password})
            if login.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"admin login answered {login.status_code}: {login.text}")
            time.sleep(0.2)
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = client.post(
            "/v1/api-keys",
            json={"name": "suite", "scopes": ["admin"]},
            headers={**bearer, "Prefer": "wait=30"},
        )
        if created.status_code not in (201, 202):
            raise RuntimeError(f"api key answered {created.status_code}: {created.text}")
        admin = Admin(user_id, email, password, created.json()["api_key"])
        while client.get("/v1/me", headers=admin.headers).status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError("the admin API key never became usable")
            time.sleep(0.1)
    return admin


def _create_admin(services: Services) -> None:
    admin = bootstrap_admin(services.base_url, services.env)
    services.admin_id, services.admin_email = admin.user_id, admin.email
    services.admin_password, services.api_key = admin.password, admin.api_key


def _warm_up(services: Services) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    doc_id = f"warm-up-{uuid.uuid4().hex[:8]}"
    body = {"document_id": doc_id, "title": "Warm-up", "text": "The worker has joined its group."}
    with httpx.Client(
        base_url=services.base_url, timeout=WARM_UP_WAIT_S + 10, headers=services.headers
    ) as client:
        while True:
            for service in (services.worker, services.projections):
                if service.exited() is not None:
                    raise RuntimeError(f"{service.name} exited with code {service.exited()}")
            response = client.post(
                "/v1/knowledge/documents", json=body, headers={"Prefer": f"wait={WARM_UP_WAIT_S}"}
            )
            if response.status_code == 201:
                return
            # 202: not decided within the wait (first group join); the retry is the same
            # document and content, so it settles as "unchanged" once the worker is in.
            if response.status_code != 202 or time.monotonic() > deadline:
                raise RuntimeError(
                    f"warm-up ingest answered {response.status_code}: {response.text[:500]}"
                )


@pytest.fixture(scope="session")
def base_url(services: Services) -> str:
    return services.base_url


@pytest.fixture(scope="session")
def api(services: Services) -> Iterator[httpx.Client]:
    """An HTTP client of the session's ingress (relative URLs)."""
    with httpx.Client(base_url=services.base_url, timeout=60.0, headers=services.headers) as client:
        yield client


@pytest.fixture(scope="session")
def auth_headers(services: Services) -> dict[str, str]:
    """The admin API key header, for clients a test builds itself."""
    return services.headers


def new_api_key(services: Services, scopes: tuple[str, ...] = ("admin",)) -> dict[str, str]:
    """A fresh API key of the suite's admin: its own rate-limit bucket, for tests that count."""
    with httpx.Client(base_url=services.base_url, timeout=30) as client:
        login = client.post(
            "/v1/auth/login",
            json={"email": services.admin_email, "password": services.admin_password},
        )
        assert login.status_code == 200, login.text
        bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
        created = client.post(
            "/v1/api-keys",
            json={"name": "test", "scopes": list(scopes)},
            headers={**bearer, "Prefer": "wait=30"},
        )
        assert created.status_code == 201, created.text
        headers = {"X-API-Key": created.json()["api_key"]}
        deadline = time.monotonic() + 30
        while client.get("/v1/me", headers=headers).status_code == 401:
            assert time.monotonic() < deadline, "the new API key never became usable"
            time.sleep(0.1)
    return headers


class IngressStarter:
    """Starts extra ingress processes with overridden settings; stops them at teardown."""

    def __init__(self, services: Services) -> None:
        self._services = services
        self._started: list[ServiceProcess] = []

    def __call__(self, **overrides: str) -> ServiceProcess:
        """An extra live ingress; ``overrides`` are env vars, e.g. ``UAIT_MAX_WAIT_S="1"``."""
        env = {**self._services.env, **overrides}
        name = f"ingress-extra-{next(_extra_ingress_numbers)}"
        try:
            service = start_ingress_process(name, env, self._services.log_dir)
        except Exception as exc:
            failed = [s for s in _running if s.name.startswith(name)]
            for s in failed:
                s.stop()
            _fail_with_logs(f"extra ingress {overrides} did not start: {exc}", failed)
        self._started.append(service)
        return service

    def stop_all(self) -> None:
        for service in self._started:
            service.stop()
        self._started.clear()


@pytest.fixture
def start_ingress(services: Services) -> Iterator[IngressStarter]:
    """``start_ingress(UAIT_MAX_WAIT_S="1")`` -> a running extra ingress (``.base_url``)."""
    starter = IngressStarter(services)
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of every running process's log to a failing e2e test's report."""
    report = yield
    if report.failed and _running:
        for service in _running:
            report.sections.append((f"process log: {service.name}", service.describe()))
    return report
