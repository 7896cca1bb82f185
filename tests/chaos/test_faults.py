"""PostgreSQL, Redis and the broker taken away mid-run: nothing is lost, nothing crashes.

Real worker, projections and ingress processes run against a private stack: PostgreSQL and
Redis started by an ``EmbeddedStack`` of this module (so they can be stopped and started again
on the same data without touching the session's services), and Tansu behind a TCP proxy the
test controls (Tansu keeps topics in memory, so the broker itself is never restarted: the proxy
is cut, which is what a network partition looks like to the clients). Commands are signed and
published straight to Kafka at a steady pace; a publish that fails while the broker is cut is
retried with the same envelope, so a command counts as accepted once the broker took it.

After each fault every accepted command has exactly one outcome, the event store holds no
duplicate effects, the processes never exited, and the read models equal a rebuild. The times
to a refusal and to recovery are printed (``-s``) and bounded only where a bound is the point:
a refusal must come well before a client gives up, not hang.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psycopg
import pytest

from app.redis_client import create_redis
from contexts import REGISTRY
from events.envelope import dumps, wrap
from events.ids import command_aggregate_id
from events.knowledge.commands import DeleteDocument, IngestDocument
from events.topics import command_topic
from infra.actors import operator_signer
from infra.breakers import Breaker, BreakerConfig, BreakerOpenError
from infra.eventstore import EventStore, open_factory
from infra.publisher import BrokerUnavailableError, CommandPublisher, headers_for
from infra.settings import Settings
from infra.stack import EmbeddedStack, eventsourcing_env
from projections.runner import rebuild_into
from tests.conftest import TEST_SECRETS, with_actor_keys
from tests.e2e.fixtures import (
    CLI,
    Admin,
    ServiceProcess,
    bootstrap_admin,
    free_port,
    spawn,
    start_ingress_process,
)
from tests.e2e.test_crash_recovery import table
from uait.processes import prepare

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(600)]

TOPIC = command_topic("knowledge")
OUTAGE_S = 10.0
# A refusal must come long before a client's own timeout (httpx: 5 s by default, ours 30 s).
REFUSAL_BOUND_S = 15.0


class TcpProxy:
    """Forwards a local port to Tansu; ``cut()`` closes it and every open connection."""

    def __init__(self) -> None:
        self.port = free_port()
        self.target_port = 0  # set before the first restore()
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._writers -= {writer, up_writer}

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self._run(self._listen())

    def cut(self) -> None:
        self._run(self._close())

    def close(self) -> None:
        self.cut()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class Traffic(threading.Thread):
    """Signed knowledge commands at a steady pace, straight to Kafka; a failed publish is
    retried with the same envelope until the broker takes it (a duplicate on the topic, when
    the failed attempt did land, is normal: the worker gives each command one outcome)."""

    def __init__(self, settings: Settings, tag: str, total: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.tag, self.total, self.rate = settings, tag, total, rate
        self.signer = operator_signer(settings)
        self.accepted: list[uuid.UUID] = []
        self.failed_publishes = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._publish())
        except BaseException as exc:
            self.error = exc

    async def _publish(self) -> None:
        rng = random.Random(self.tag)
        docs = [f"{self.tag}-{i:04d}" for i in range(max(1, self.total // 3))]
        assert self.signer is not None
        publisher = CommandPublisher(self.settings.kafka_bootstrap, timeout_s=2)
        try:
            start = time.monotonic()
            for i in range(self.total):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                doc = rng.choice(docs)
                command: Any
                if rng.random() < 0.1:
                    command = DeleteDocument(document_id=doc)
                else:
                    text = f"version {rng.randint(1, 3)} of {doc}: infrastructure faults"
                    command = IngestDocument(document_id=doc, title=doc, text=text)
                envelope = wrap(
                    command, actor="fault-test", actor_token=self.signer("fault-test", command)
                )
                while True:
                    try:
                        await publisher.send_raw(
                            TOPIC, dumps(envelope), doc.encode(), headers_for(envelope)
                        )
                        break
                    except BrokerUnavailableError:
                        self.failed_publishes += 1
                        await publisher.stop()
                        await asyncio.sleep(0.2)
                self.accepted.append(envelope.message_id)
        finally:
            await publisher.stop()


class FaultStack:
    """The module's private services, its processes and every command they accepted."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.accepted: set[uuid.UUID] = set()
        self.proxy = TcpProxy()
        self.stack = EmbeddedStack(
            Settings(), data_dir=root / "stack", kafka_advertised_port=self.proxy.port
        )
        self.processes: list[ServiceProcess] = []

    def start(self) -> None:
        ep = self.stack.start()
        assert self.stack.kafka_port is not None
        self.proxy.target_port = self.stack.kafka_port
        self.proxy.restore()
        self.settings = with_actor_keys(
            Settings(
                kafka_bootstrap=ep.kafka_bootstrap,
                database_url=ep.database_url,
                redis_url=ep.redis_url,
                worker_session_timeout_ms=3000,
                worker_batch_size=100,
            )
        )
        prepare(self.settings)
        self.env = {
            **os.environ,
            "UAIT_DATA_DIR": str(self.root / "data"),
            "UAIT_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "UAIT_DATABASE_URL": ep.database_url,
            "UAIT_REDIS_URL": ep.redis_url,
            "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000",
            "UAIT_WORKER_BATCH_SIZE": "100",
            "UAIT_WORKER_METRICS_PORT": str(free_port()),
            "UAIT_PROJECTIONS_METRICS_PORT": str(free_port()),
            "UAIT_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **TEST_SECRETS,
            "UAIT_ARGON2_MEMORY_KIB": "8192",
            "UAIT_ARGON2_TIME_COST": "1",
        }
        self.env.pop("UAIT_RATE_LIMIT_EXEMPT", None)  # the limits are under test here
        logs = self.root / "logs"
        logs.mkdir()
        self.worker = spawn("worker", [*CLI, "worker"], self.env, logs)
        self.projections = spawn("projections", [*CLI, "projections", "run"], self.env, logs)
        self.ingress = start_ingress_process("ingress", self.env, logs)
        self.processes = [self.worker, self.projections, self.ingress]
        self.admin: Admin = bootstrap_admin(self.ingress.base_url, self.env)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        self.proxy.close()
        self.stack.stop()

    def alive(self) -> dict[str, int | None]:
        return {p.name: p.exited() for p in self.processes}

    def logs(self) -> str:
        return "\n".join(p.describe() for p in self.processes)

    def run_traffic(self, tag: str, total: int, rate: float) -> Traffic:
        traffic = Traffic(self.settings, tag, total, rate)
        traffic.start()
        return traffic

    def settle(self, traffic: Traffic, timeout_s: float = 120) -> float:
        """Wait for the traffic to end and every command accepted so far to have its outcome (in
        the read model); returns the seconds that took after the traffic ended."""
        traffic.join(timeout=timeout_s)
        assert traffic.error is None, traffic.error
        assert not traffic.is_alive(), "the traffic never finished"
        self.accepted |= set(traffic.accepted)
        ended = time.monotonic()
        expected = set(self.accepted)
        deadline = ended + timeout_s
        while True:
            try:
                with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM command_outcomes WHERE command_id = ANY(%s)",
                        (list(expected),),
                    ).fetchone()
                done = row[0] if row else 0
            except psycopg.OperationalError:
                done = -1
            if done == len(expected):
                return time.monotonic() - ended
            assert time.monotonic() < deadline, f"{done}/{len(expected)} outcomes\n{self.logs()}"
            time.sleep(0.25)

    def _wait_for_projections(self, store: EventStore, timeout_s: float = 60) -> None:
        """Until every knowledge projection has passed the last event in the store."""
        names = [p.name for p in REGISTRY.projections() if p.context == "knowledge"]
        last = store.recorder.max_notification_id() or 0
        deadline = time.monotonic() + timeout_s
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            while True:
                rows = conn.execute(
                    "SELECT application_name, max(notification_id) FROM knowledge_tracking"
                    " WHERE application_name = ANY(%s) GROUP BY 1",
                    (names,),
                ).fetchall()
                behind = {n: p for n, p in rows if p < last} | {
                    n: 0 for n in names if n not in dict(rows)
                }
                if not behind:
                    return
                assert time.monotonic() < deadline, f"projections behind {last}: {behind}"
                time.sleep(0.25)

    def verify(self) -> None:
        """One outcome per accepted command, no doubled effects, read models = a rebuild."""
        assert self.alive() == {p.name: None for p in self.processes}, self.logs()
        s = self.settings
        factory = open_factory("knowledge", eventsourcing_env(s.database_url))
        try:
            store = EventStore("knowledge", factory)
            self._wait_for_projections(store)
            streams = store.load_streams([command_aggregate_id(c) for c in self.accepted])
            lost = sum(1 for c in self.accepted if not streams.get(command_aggregate_id(c)))
            extra = sum(len(v) - 1 for v in streams.values() if len(v) > 1)
            with psycopg.connect(s.database_url) as conn:
                changed = conn.execute(
                    "SELECT count(*) FROM command_outcomes WHERE status = 'succeeded'"
                    " AND detail <> 'unchanged' AND command_id = ANY(%s)",
                    (list(self.accepted),),
                ).fetchone()
            notes = store.recorder.select_notifications(start=0, limit=10**7)
            kinds = Counter(n.topic for n in notes)
            doc_events = kinds["DocumentIngested"] + kinds["DocumentDeleted"]
            duplicated = extra + abs(doc_events - (changed[0] if changed else 0))
            assert (lost, duplicated) == (0, 0), f"lost={lost} duplicated={duplicated}"
            assert kinds["CommandSucceeded"] + kinds["CommandRejected"] == len(self.accepted)
            for projection in REGISTRY.projections():
                if projection.context != "knowledge":
                    continue
                schema = f"verify_{uuid.uuid4().hex[:8]}"
                rebuild_into(projection, store.recorder, schema)
                with psycopg.connect(s.database_url) as conn:
                    for name in projection.tables:
                        live = table(conn, "public", name)
                        assert live == table(conn, schema, name), f"{name} differs from its rebuild"
        finally:
            factory.close()


@pytest.fixture(scope="module")
def faults() -> Iterator[FaultStack]:
    # A short root: the sockets of PostgreSQL and Redis live in it, and must keep their paths
    # across a restart (a long path would move them to a fresh temporary dir).
    root = Path(tempfile.mkdtemp(prefix="uait-faults-"))
    stack = FaultStack(root)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


def timed(fn: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def test_postgres_stopped_for_ten_seconds_loses_nothing_and_processing_resumes(faults):
    client = httpx.Client(
        base_url=faults.ingress.base_url, timeout=60, headers=faults.admin.headers
    )
    traffic = faults.run_traffic("pg", total=1500, rate=100)
    time.sleep(2.0)
    faults.stack.stop_service("postgres")
    stopped = time.monotonic()
    answers: list[tuple[str, int, float]] = []
    writes: list[tuple[int, float]] = []
    body = {"document_id": "pg-http", "title": "t", "text": "while PostgreSQL is down"}
    while time.monotonic() - stopped < OUTAGE_S:
        for path in ("/v1/knowledge/documents/pg-0001", "/readyz"):
            response, took = timed(lambda p=path: client.get(p))
            answers.append((path, response.status_code, took))
        # A command needs Kafka, not PostgreSQL: it is accepted while the API key is cached
        # (revocations are checked in Redis); otherwise it is refused with a problem.
        write, took = timed(lambda: client.post("/v1/knowledge/documents", json=body))
        writes.append((write.status_code, took))
        assert write.status_code in (202, 503), write.text
        if write.status_code == 202:
            faults.accepted.add(uuid.UUID(write.json()["command_id"]))
        time.sleep(0.5)
    url = faults.stack.start_service("postgres")
    restarted = time.monotonic()
    assert url == faults.settings.database_url
    caught_up = faults.settle(traffic)
    client.close()
    print(f"\nPostgreSQL down {restarted - stopped:.1f} s; answers while down: {answers}")
    print(f"commands posted while down: {writes}")
    print(f"outcomes complete {time.monotonic() - restarted:.1f} s after the restart"
          f" ({caught_up:.1f} s after the traffic ended)")  # fmt: skip
    # While down: refusals (503 problems), never a hang, never a 500.
    assert answers
    assert {code for _, code, _ in answers} == {503}, answers
    assert max(took for _, _, took in answers) < REFUSAL_BOUND_S, answers
    assert max(took for _, took in writes) < REFUSAL_BOUND_S, writes
    faults.verify()


def test_redis_stopped_fails_limits_per_policy_and_recovers_by_itself(faults):
    headers = faults.admin.headers
    login = {"email": faults.admin.email, "password": faults.admin.password}
    base = faults.ingress.base_url
    redis_url = faults.settings.redis_url

    async def breaker_calls() -> tuple[str, str]:
        """A breaker failing open runs the call unguarded; one failing closed refuses it."""
        redis = create_redis(faults.settings)
        assert redis is not None
        try:
            lenient = Breaker("fault-open", redis, BreakerConfig(fail_open=True))
            strict = Breaker("fault-closed", redis, BreakerConfig(fail_open=False))

            async def backend() -> str:
                return "called"

            got_open = await lenient.call(backend)
            try:
                got_closed = await strict.call(backend)
            except BreakerOpenError:
                got_closed = "refused"
            return got_open, got_closed
        finally:
            await redis.aclose()

    traffic = faults.run_traffic("redis", total=600, rate=100)
    time.sleep(1.0)
    faults.stack.stop_service("redis")
    stopped = time.monotonic()
    with httpx.Client(base_url=base, timeout=60) as client:
        write, write_s = timed(
            lambda: client.post(
                "/v1/knowledge/documents",
                json={"document_id": "redis-http", "title": "t", "text": "while Redis is down"},
                headers=headers,
            )
        )
        denied, login_s = timed(lambda: client.post("/v1/auth/login", json=login))
        me, me_s = timed(lambda: client.get("/v1/me", headers=headers))
        breakers = asyncio.run(breaker_calls())
        # Processing goes on without Redis.
        caught_up = faults.settle(traffic)
        down_for = time.monotonic() - stopped
        assert faults.alive() == {p.name: None for p in faults.processes}, faults.logs()
        url = faults.stack.start_service("redis")
        restarted = time.monotonic()
        assert url == redis_url
        # Recovery without an operator: logins and limiter headers come back.
        while True:
            again = client.post("/v1/auth/login", json=login)
            if again.status_code == 200:
                break
            assert time.monotonic() - restarted < 60, again.text
            time.sleep(0.2)
        login_back = time.monotonic() - restarted
        later = client.post(
            "/v1/knowledge/documents",
            json={"document_id": "redis-http", "title": "t", "text": "after Redis is back"},
            headers=headers,
        )
    print(f"\nRedis down {down_for:.1f} s: knowledge write {write.status_code} in {write_s:.3f} s,"
          f" login {denied.status_code} in {login_s:.3f} s, /v1/me {me.status_code} in"
          f" {me_s:.3f} s, breakers {breakers}, outcomes {caught_up:.1f} s after the traffic;"
          f" login back {login_back:.2f} s after the restart")  # fmt: skip
    assert write.status_code == 202, write.text  # knowledge writes fail open
    assert "ratelimit-policy" not in {k.lower() for k in write.headers}
    assert denied.status_code == 503, denied.text  # login fails closed
    assert denied.headers.get("Retry-After")
    assert me.status_code == 200, me.text  # API keys still authenticate (PostgreSQL)
    assert breakers == ("called", "refused")
    assert max(write_s, login_s, me_s) < REFUSAL_BOUND_S
    assert later.status_code == 202, later.text
    assert "ratelimit-policy" in {k.lower() for k in later.headers}, later.headers
    faults.accepted |= {
        uuid.UUID(write.json()["command_id"]),
        uuid.UUID(later.json()["command_id"]),
    }

    async def breaker_after() -> int:
        redis = create_redis(faults.settings)
        assert redis is not None
        try:
            strict = Breaker("fault-closed", redis, BreakerConfig(fail_open=False))

            async def backend() -> str:
                return "called"

            assert await strict.call(backend) == "called"
            return (await strict.status()).calls
        finally:
            await redis.aclose()

    assert asyncio.run(breaker_after()) == 1  # guarded again: the call was recorded
    faults.settle(faults.run_traffic("redis-after", total=1, rate=1))
    faults.verify()


def test_broker_cut_off_answers_503_then_processing_carries_on(faults):
    headers = faults.admin.headers
    traffic = faults.run_traffic("broker", total=1500, rate=100)
    time.sleep(2.0)
    faults.proxy.cut()
    cut = time.monotonic()
    answers: list[tuple[int, str | None, float]] = []
    maybe: set[uuid.UUID] = set()
    with httpx.Client(base_url=faults.ingress.base_url, timeout=60) as client:
        while time.monotonic() - cut < OUTAGE_S:
            response, took = timed(
                lambda: client.post(
                    "/v1/knowledge/documents",
                    json={"document_id": "broker-http", "title": "t", "text": "cut off"},
                    headers=headers,
                )
            )
            answers.append((response.status_code, response.headers.get("Retry-After"), took))
            # A 202 is accepted; a 503 names a command only when the broker may still take it
            # later (it had been handed to the producer). One it does not name was not sent:
            # if it landed anyway, verify() finds an outcome more than accepted commands.
            body = response.json()
            if "command_id" in body:
                maybe.add(uuid.UUID(body["command_id"]))
            if response.status_code == 503 and "command_id" in body:
                assert body["status_url"].endswith(f"/v1/commands/{body['command_id']}")
            time.sleep(0.5)  # under the knowledge write limit (40 a minute)
        faults.proxy.restore()
        restored = time.monotonic()
        caught_up = faults.settle(traffic)
        recovered = time.monotonic() - restored
        back = client.post(
            "/v1/knowledge/documents",
            json={"document_id": "broker-http", "title": "t", "text": "broker back"},
            headers={**headers, "Prefer": "wait=30"},
        )
    times = sorted(took for _, _, took in answers)
    print(f"\nbroker cut {restored - cut:.1f} s; {len(answers)} commands posted while cut:"
          f" {Counter(code for code, _, _ in answers)}, median {statistics.median(times):.4f} s,"
          f" max {times[-1]:.4f} s")  # fmt: skip
    print(f"outcomes complete {recovered:.1f} s after the proxy came back"
          f" ({caught_up:.1f} s after the traffic ended); {traffic.failed_publishes} failed"
          f" publishes retried")  # fmt: skip
    assert back.status_code in (201, 202), back.text
    faults.accepted.add(uuid.UUID(back.json()["command_id"]))
    refused = [a for a in answers if a[0] == 503]
    assert all(code in (202, 503) for code, _, _ in answers), answers
    assert refused, answers
    assert all(retry for _, retry, _ in refused), answers
    assert max(took for _, _, took in answers) < REFUSAL_BOUND_S, answers
    assert traffic.failed_publishes > 0  # the cut did reach the clients
    faults.settle(faults.run_traffic("broker-after", total=1, rate=1))
    # The refused commands that did land count like accepted ones (one outcome, one effect).
    with psycopg.connect(faults.settings.database_url) as conn:
        landed = {
            row[0]
            for row in conn.execute(
                "SELECT command_id FROM command_outcomes WHERE command_id = ANY(%s)",
                (list(maybe),),
            ).fetchall()
        }
    print(f"{len(landed)} of {len(maybe)} commands answered 503 were delivered later")
    faults.accepted |= landed
    faults.verify()
