"""Long-running commands end to end, with the tiny model and real worker processes.

A private broker and database per module: workers are killed and stopped here. Commands go
straight onto the Kafka topic (no HTTP); outcomes are read from the event store itself, where
"exactly one" is checkable: one outcome record per command, one terminal event per run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import pytest
import redis as redis_sync
from aiokafka import AIOKafkaConsumer

from events.ids import command_aggregate_id, run_aggregate_id, uuid7
from events.inference.commands import ModelSpec, RegisterModel, RequestCompletion
from events.inference.events import CompletionCancelled, CompletionProduced
from events.outcomes import CommandRejected, CommandSucceeded
from events.topics import event_topic
from infra.actors import operator_signer
from infra.cancel import cancel_key
from infra.eventstore import EventStore, open_factory
from infra.publisher import CommandPublisher
from infra.runstreams import stream_key
from infra.settings import Settings
from infra.stack import EmbeddedStack, create_database, drop_database, eventsourcing_env
from tests.conftest import with_actor_keys
from uait.processes import prepare

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from events.base import Command, Event
    from infra.stack import Endpoints

pytestmark = pytest.mark.e2e

MODEL = "tiny"
LONG = 2500
"""Tokens of a long generation: several seconds of the tiny model here, at temperature 0
(it never picks its end token there, so a run lasts exactly this many tokens)."""


class Stack:
    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.store = EventStore("inference", open_factory("inference", self.es_env))
        self.redis = redis_sync.Redis.from_url(settings.redis_url)

    @property
    def es_env(self) -> dict[str, str]:
        return eventsourcing_env(self.settings.database_url)

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        s = self.settings
        full = {
            **os.environ,
            "UAIT_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
            "UAIT_DATABASE_URL": s.database_url,
            "UAIT_REDIS_URL": s.redis_url,
            "UAIT_KEY_ENCRYPTION_KEYS": s.key_encryption_keys.get_secret_value(),
            "UAIT_WORKER_SESSION_TIMEOUT_MS": "3000",
            "UAIT_RUN_LEASE_S": "3",
            "UAIT_RUN_POLL_S": "0.5",
            "UAIT_RUN_HANDOVER_S": "1",
            "UAIT_LOG_LEVEL": "INFO",
            **env,
        }
        name = "-".join(a for a in args if not a.startswith("-"))
        out = (self.log_dir / f"{name}-{len(self.procs)}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "uait", *args], env=full, stdout=out, stderr=out
        )
        self.procs.append(proc)
        return proc

    def worker(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn("worker", "--context", "inference", **env)

    def publish(self, command: Command) -> uuid.UUID:
        async def send() -> uuid.UUID:
            async with CommandPublisher(
                self.settings.kafka_bootstrap,
                timeout_s=10,
                signer=operator_signer(self.settings),
            ) as publisher:
                envelope = await publisher.publish(command, actor="runs-test")
                return envelope.message_id

        return asyncio.run(send())

    def outcome(self, command_id: uuid.UUID, timeout_s: float = 60) -> list[Event]:
        """The command's outcome records (waits for the first)."""
        deadline = time.monotonic() + timeout_s
        aggregate = command_aggregate_id(command_id)
        while time.monotonic() < deadline:
            found = self.store.load_streams([aggregate]).get(aggregate, [])
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no outcome for {command_id} within {timeout_s} s\n{self.logs()}")

    def run_events(self, request_id: str) -> list[Event]:
        rid = run_aggregate_id(request_id)
        return self.store.load_streams([rid]).get(rid, [])

    def run_row(self, command_id: uuid.UUID) -> dict[str, Any] | None:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            cur = conn.execute(
                "SELECT state, owner, attempts FROM runs WHERE command_id = %s", (command_id,)
            )
            row = cur.fetchone()
        return dict(zip(("state", "owner", "attempts"), row, strict=True)) if row else None

    def streamed(self, command_id: uuid.UUID) -> list[tuple[str, dict[str, Any]]]:
        entries = self.redis.xrange(stream_key(command_id))
        return [(f[b"k"].decode(), orjson.loads(f[b"d"])) for _, f in entries]

    def tokens_streamed(self, command_id: uuid.UUID) -> int:
        return sum(1 for kind, _ in self.streamed(command_id) if kind == "token")

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.log_dir.glob("*.log"))
        )

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait(timeout=10)
        self.store.factory.close()


@pytest.fixture(scope="module")
def stack(
    endpoints: Endpoints, tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> Iterator[Stack]:
    dbname = f"uait_runs_{uuid.uuid4().hex[:8]}"
    database_url = create_database(endpoints.database_url, dbname)
    base = with_actor_keys(Settings(database_url=database_url, redis_url=endpoints.redis_url))
    try:
        with EmbeddedStack(base, data_dir=tmp_path_factory.mktemp("runs-kafka")) as ep:
            settings = base.model_copy(update={"kafka_bootstrap": ep.kafka_bootstrap})
            prepare(settings)
            s = Stack(settings, tmp_path_factory.mktemp("runs-logs"))
            try:
                # Every worker the module needs, from the start: a worker joining the consumer
                # group later makes it rebalance, which may hold new commands for many seconds.
                # The hand-over test stops one, the takeover test kills another.
                for _ in range(3):
                    s.worker()
                spec = ModelSpec(backend="mlx", source=str(tiny_model_dir), context_length=8192)
                registered = s.outcome(s.publish(RegisterModel(name=MODEL, spec=spec)))
                assert isinstance(registered[0], CommandSucceeded), registered
                yield s
            finally:
                s.stop()
    finally:
        drop_database(endpoints.database_url, dbname)


def request(max_tokens: int, **fields: Any) -> RequestCompletion:
    return RequestCompletion(
        request_id=uuid7().hex,
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        max_tokens=max_tokens,
        temperature=0.0,
        **fields,
    )


def wait_for(what: str, check: Any, timeout_s: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s\n{stack.logs()}")


def owner_pid(owner: str) -> int:
    return int(owner.split(":")[1])


def test_a_producer_on_kafka_gets_its_completion_on_the_relay_topic(stack: Stack) -> None:
    relay = stack.spawn("relay")
    command = request(24)
    command_id = stack.publish(command)

    async def consume() -> dict[str, Any]:
        consumer = AIOKafkaConsumer(
            event_topic("inference"),
            bootstrap_servers=stack.settings.kafka_bootstrap,
            auto_offset_reset="earliest",
            group_id=f"runs-test-{uuid.uuid4().hex[:6]}",
        )
        await consumer.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for records in batch.values():
                    for record in records:
                        event = orjson.loads(record.value or b"{}")
                        data = event.get("data") or event.get("payload") or {}
                        if (
                            event.get("type") == CompletionProduced.TYPE
                            and data.get("request_id") == command.request_id
                        ):
                            return dict(data)
            raise AssertionError(f"no CompletionProduced on the relay topic\n{stack.logs()}")
        finally:
            await consumer.stop()

    try:
        produced = asyncio.run(consume())
    finally:
        relay.terminate()
        relay.wait(timeout=20)
    assert produced["completion_tokens"] == 24
    assert produced["finish_reason"] == "length"
    # What the live stream carried, token by token, is the recorded text.
    tokens = [d["text"] for kind, d in stack.streamed(command_id) if kind == "token"]
    assert "".join(tokens) == produced["text"]
    outcome = stack.outcome(command_id)
    assert len(outcome) == 1
    assert isinstance(outcome[0], CommandSucceeded)


def test_a_long_generation_holds_up_no_command_behind_it(stack: Stack) -> None:
    long_id = stack.publish(request(LONG))
    wait_for("the long run streams", lambda: stack.tokens_streamed(long_id) > 10, 60, stack)
    # Same context, and whatever partition: decided while the generation goes on.
    spec = ModelSpec(backend="mlx", source="/nonexistent/elsewhere", context_length=2048)
    other = stack.publish(RegisterModel(name=f"other-{uuid.uuid4().hex[:6]}", spec=spec))
    decided = stack.outcome(other, timeout_s=20)
    assert isinstance(decided[0], CommandSucceeded)
    row = stack.run_row(long_id)
    assert row is not None
    assert row["state"] == "running", "the long run finished first: the check proves nothing"
    stack.outcome(long_id, timeout_s=120)


def test_cancel_stops_a_generation_between_two_tokens(stack: Stack) -> None:
    command = request(LONG)
    command_id = stack.publish(command)
    wait_for("tokens streamed", lambda: stack.tokens_streamed(command_id) > 20, 60, stack)
    stack.redis.set(cancel_key(command_id), b"1", ex=600)
    cancelled_at = time.monotonic()
    stack.redis.publish("uait:cancellations", str(command_id))
    outcome = stack.outcome(command_id, timeout_s=30)
    took = time.monotonic() - cancelled_at
    assert len(outcome) == 1
    assert isinstance(outcome[0], CommandRejected)
    assert outcome[0].code == "cancelled"
    terminal = stack.run_events(command.request_id)[-1]
    assert isinstance(terminal, CompletionCancelled)
    assert 20 < terminal.completion_tokens < LONG
    assert terminal.text == "".join(
        d["text"] for kind, d in stack.streamed(command_id) if kind == "token"
    )
    print(f"cancelled after {terminal.completion_tokens} tokens; outcome {took:.2f} s later")


def _takeover(stack: Stack, stop: signal.Signals) -> tuple[CompletionProduced, float, int]:
    """A long run, its owner stopped with ``stop`` mid-generation; another worker ends it."""
    command = request(LONG)
    command_id = stack.publish(command)
    row = wait_for(
        "the run is claimed",
        lambda: (r := stack.run_row(command_id)) and r["owner"] and r,
        60,
        stack,
    )
    wait_for("tokens streamed", lambda: stack.tokens_streamed(command_id) > 100, 60, stack)
    victim = owner_pid(row["owner"])
    stopped_at = time.monotonic()
    os.kill(victim, stop)
    outcome = stack.outcome(command_id, timeout_s=120)
    took = time.monotonic() - stopped_at
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], CommandSucceeded), outcome
    events = stack.run_events(command.request_id)
    terminals = [e for e in events if isinstance(e, CompletionProduced)]
    assert len(terminals) == 1, events
    produced = terminals[0]
    assert produced.attempts >= 2
    assert produced.completion_tokens == LONG
    # The live stream: every token once, in order, across both workers.
    streamed = [d["text"] for kind, d in stack.streamed(command_id) if kind == "token"]
    assert "".join(streamed) == produced.text
    kinds = [kind for kind, _ in stack.streamed(command_id)]
    assert kinds.count("final") == 1
    return produced, took, victim


def test_sigterm_hands_a_run_over_and_the_worker_exits_0(stack: Stack) -> None:
    produced, took, victim = _takeover(stack, signal.SIGTERM)
    proc = next(p for p in stack.procs if p.pid == victim)
    assert proc.wait(timeout=30) == 0, stack.logs()
    print(f"after SIGTERM: finished {took:.1f} s later, attempt {produced.attempts}")


def test_sigkill_of_the_worker_mid_generation_another_finishes_it_once(stack: Stack) -> None:
    # Last in the module: a member killed without leaving holds up the consumer group's next
    # rebalance, which would slow whatever test comes after.
    produced, took, _ = _takeover(stack, signal.SIGKILL)
    print(f"after SIGKILL: finished {took:.1f} s later, attempt {produced.attempts}")
