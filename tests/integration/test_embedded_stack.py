"""The embedded services really start, answer, and stop without leaving processes behind."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psutil
import psycopg
import pytest
import redis
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from contexts import REGISTRY
from events.topics import command_topic, dead_letter_topic, event_topic, retry_topic
from infra.settings import Settings
from infra.stack import EmbeddedStack, StackStartError, database_url_for, eventsourcing_env
from infra.topics import (
    RETRY_HEADROOM_BYTES,
    TopicPartitionMismatchError,
    TopicSpec,
    describe_topics,
    ensure_topics,
)

if TYPE_CHECKING:
    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def _all_embedded() -> Settings:
    # Explicit empty URLs win over UAIT_* in the environment: these tests are
    # about starting the embedded services themselves.
    return Settings(kafka_bootstrap="", database_url="", redis_url="")


def _topic(label: str) -> str:
    return f"test.{label}.{secrets.token_hex(4)}"


def _alive(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _process_tree(pids: dict[str, int]) -> list[int]:
    tree: list[int] = []
    for pid in pids.values():
        tree.append(pid)
        tree += [child.pid for child in psutil.Process(pid).children(recursive=True)]
    return tree


# -- Kafka -------------------------------------------------------------------


def test_topic_specs_give_every_context_a_command_a_dead_letter_and_an_event_topic() -> None:
    settings = Settings(command_partitions=6, event_partitions=3)

    specs = {spec.name: spec for spec in REGISTRY.topic_specs(settings)}

    commands = command_topic("knowledge")
    assert specs[commands].partitions == 6
    assert specs[dead_letter_topic(commands)].partitions == 6
    assert specs[retry_topic(commands)].partitions == 6
    assert specs[event_topic("knowledge")].partitions == 3
    limit = str(settings.kafka_max_message_bytes)
    retried = str(settings.kafka_max_message_bytes + RETRY_HEADROOM_BYTES)
    assert {
        name: spec.config["max.message.bytes"]
        for name, spec in specs.items()
        if name.startswith("uait.commands.knowledge") or name == event_topic("knowledge")
    } == {
        commands: limit,
        retry_topic(commands): retried,
        dead_letter_topic(commands): retried,
        event_topic("knowledge"): limit,
    }


async def test_topics_are_created_with_the_requested_partition_counts_and_only_once(
    endpoints: Endpoints,
) -> None:
    specs = [
        TopicSpec(_topic("three"), 3, {"max.message.bytes": str(2 * 1024 * 1024)}),
        TopicSpec(_topic("one"), 1, {}),
    ]
    names = [spec.name for spec in specs]

    created = await ensure_topics(endpoints.kafka_bootstrap, specs)
    again = await ensure_topics(endpoints.kafka_bootstrap, specs)

    assert sorted(created) == sorted(names)
    assert again == []
    assert await describe_topics(endpoints.kafka_bootstrap, names) == {names[0]: 3, names[1]: 1}


async def test_the_service_topics_can_be_ensured_from_settings(endpoints: Endpoints) -> None:
    specs = REGISTRY.topic_specs(Settings())

    await ensure_topics(endpoints.kafka_bootstrap, specs)

    counts = await describe_topics(endpoints.kafka_bootstrap, [spec.name for spec in specs])
    assert all(counts[spec.name] >= spec.partitions for spec in specs)


async def test_a_topic_with_fewer_partitions_than_asked_is_an_error_and_more_is_fine(
    endpoints: Endpoints,
) -> None:
    name = _topic("short")
    await ensure_topics(endpoints.kafka_bootstrap, [TopicSpec(name, 2, {})])

    with pytest.raises(TopicPartitionMismatchError, match=name):
        await ensure_topics(endpoints.kafka_bootstrap, [TopicSpec(name, 3, {})])
    assert await ensure_topics(endpoints.kafka_bootstrap, [TopicSpec(name, 1, {})]) == []


async def _consume_one(consumer: AIOKafkaConsumer, timeout_s: float = 20) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batches = await consumer.getmany(timeout_ms=500)
        records = [record for batch in batches.values() for record in batch]
        if records:
            return records
    raise AssertionError(f"no message within {timeout_s} s")


async def test_a_message_round_trips_through_a_consumer_group_with_manual_commits(
    endpoints: Endpoints,
) -> None:
    topic = _topic("roundtrip")
    group = f"group-{secrets.token_hex(4)}"
    await ensure_topics(endpoints.kafka_bootstrap, [TopicSpec(topic, 3, {})])
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"aggregate-1")
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=endpoints.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        # Tansu holds a join for about half the session timeout (5 s by default).
        session_timeout_ms=2000,
        heartbeat_interval_ms=300,
    )
    await consumer.start()
    try:
        records = await _consume_one(consumer)
        await consumer.commit()
    finally:
        await consumer.stop()

    assert [(r.key, r.value, r.partition) for r in records] == [
        (b"aggregate-1", b"hello", sent.partition)
    ]
    # A new member of the group starts after the committed message.
    checker = AIOKafkaConsumer(bootstrap_servers=endpoints.kafka_bootstrap, group_id=group)
    await checker.start()
    try:
        committed = await checker.committed(TopicPartition(topic, sent.partition))
    finally:
        await checker.stop()
    assert committed == sent.offset + 1


async def test_a_message_as_large_as_the_configured_limit_round_trips(
    endpoints: Endpoints,
) -> None:
    limit = Settings().kafka_max_message_bytes
    topic = _topic("large")
    await ensure_topics(
        endpoints.kafka_bootstrap, [TopicSpec(topic, 1, {"max.message.bytes": str(limit)})]
    )
    payload = secrets.token_bytes(limit - 1024)  # room for the record framing
    producer = AIOKafkaProducer(bootstrap_servers=endpoints.kafka_bootstrap, max_request_size=limit)
    await producer.start()
    try:
        await producer.send_and_wait(topic, payload)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=endpoints.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        records = await _consume_one(consumer)
    finally:
        await consumer.stop()
    assert [r.value for r in records] == [payload]


# -- PostgreSQL --------------------------------------------------------------


def test_postgres_answers_and_has_the_vector_extension(endpoints: Endpoints) -> None:
    with psycopg.connect(endpoints.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        available = conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()
        distance = conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,5]'::vector").fetchone()

    assert available is not None
    assert distance == (2.0,)


class Counter(Aggregate):
    @event("Created")
    def __init__(self) -> None:
        self.count = 0

    @event("Incremented")
    def increment(self) -> None:
        self.count += 1


def test_eventsourcing_env_lets_the_eventsourcing_library_store_and_read_events(
    endpoints: Endpoints,
) -> None:
    app = Application[UUID](env=eventsourcing_env(endpoints.database_url))
    try:
        counter = Counter()
        counter.increment()
        app.save(counter)

        assert app.repository.get(counter.id).count == 1
    finally:
        app.close()


def test_database_url_for_swaps_only_the_database_name() -> None:
    url = "postgresql://app:p%40ss@db.example:5433/old?sslmode=require&dbname=x&host=%2Frun%20a"

    assert database_url_for(url, "new db") == (
        "postgresql://app:p%40ss@db.example:5433/new%20db?sslmode=require&host=%2Frun%20a"
    )
    assert "dbname=new" in database_url_for("host=db.example dbname=old", "new")


def test_eventsourcing_env_reads_tcp_urls_and_unix_socket_urls() -> None:
    tcp = eventsourcing_env("postgresql://app:secret@db.example:5433/events")
    socket = eventsourcing_env("postgresql://postgres@/uait?host=/tmp/pg%20dir")

    assert tcp == {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": "events",
        "POSTGRES_HOST": "db.example",
        "POSTGRES_PORT": "5433",
        "POSTGRES_USER": "app",
        "POSTGRES_PASSWORD": "secret",
    }
    assert (socket["POSTGRES_HOST"], socket["POSTGRES_PORT"]) == ("/tmp/pg dir", "5432")
    assert (socket["POSTGRES_DBNAME"], socket["POSTGRES_PASSWORD"]) == ("uait", "")


# -- Redis -------------------------------------------------------------------


async def test_redis_answers_ping_and_runs_a_lua_script(endpoints: Endpoints) -> None:
    client = redis.asyncio.Redis.from_url(endpoints.redis_url)
    key = f"test:{secrets.token_hex(4)}"
    try:
        assert await client.ping()
        script = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
        assert await client.eval(script, 1, key, 5) == 5
        assert await client.eval(script, 1, key, 2) == 7
    finally:
        await client.delete(key)
        await client.aclose()


# -- lifecycle ---------------------------------------------------------------


def test_stop_leaves_no_child_process_alive_and_can_be_called_twice(tmp_path: Path) -> None:
    stack = EmbeddedStack(_all_embedded(), data_dir=tmp_path)
    stack.start()
    pids = stack.pids
    tree = _process_tree(pids)

    stack.stop()
    stack.stop()

    assert set(pids) == {"tansu", "redis", "postgres"}
    assert len(tree) > len(pids)  # postgres' own workers are checked too
    assert [pid for pid in tree if _alive(pid)] == []
    assert stack.pids == {}


def test_a_restarted_stack_keeps_its_postgres_and_redis_data(tmp_path: Path) -> None:
    with EmbeddedStack(_all_embedded(), data_dir=tmp_path) as first:
        with psycopg.connect(first.database_url) as conn:
            conn.execute("CREATE TABLE kept (note text)")
            conn.execute("INSERT INTO kept VALUES ('still here')")
        redis.Redis.from_url(first.redis_url).set("kept", "still here")

    with EmbeddedStack(_all_embedded(), data_dir=tmp_path) as second:
        with psycopg.connect(second.database_url) as conn:
            assert conn.execute("SELECT note FROM kept").fetchall() == [("still here",)]
        assert redis.Redis.from_url(second.redis_url).get("kept") == b"still here"


def test_one_service_stopped_and_started_again_keeps_its_url_and_its_data(tmp_path: Path) -> None:
    only_redis = Settings(kafka_bootstrap="kafka.example:9092", database_url="postgresql://x@h/d")
    stack = EmbeddedStack(only_redis, data_dir=tmp_path)
    endpoints = stack.start()
    try:
        redis.Redis.from_url(endpoints.redis_url).set("kept", "still here")
        first_pid = stack.pids["redis"]
        with pytest.raises(ValueError, match="already running"):
            stack.start_service("redis")
        with pytest.raises(ValueError, match="only"):
            stack.start_service("tansu")

        stack.stop_service("redis")

        assert stack.pids == {}
        assert not _alive(first_pid)
        with pytest.raises(ValueError, match="not running"):
            stack.stop_service("redis")
        assert stack.start_service("redis") == endpoints.redis_url
        assert redis.Redis.from_url(endpoints.redis_url).get("kept") == b"still here"
    finally:
        stack.stop()


def test_a_second_stack_on_a_data_dir_in_use_fails_clearly_and_leaves_the_first_alone(
    tmp_path: Path,
) -> None:
    with EmbeddedStack(_all_embedded(), data_dir=tmp_path) as first:
        intruder = EmbeddedStack(_all_embedded(), data_dir=tmp_path)

        with pytest.raises(StackStartError, match="already answers"):
            intruder.start()

        assert intruder.pids == {}
        assert redis.Redis.from_url(first.redis_url).ping()
        with psycopg.connect(first.database_url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_named_setting_is_returned_as_is_without_starting_anything(tmp_path: Path) -> None:
    named = Settings(
        kafka_bootstrap="kafka.example:9092",
        database_url="postgresql://app:secret@db.example:5432/app",
        redis_url="redis://cache.example:6379/0",
    )
    stack = EmbeddedStack(named, data_dir=tmp_path)

    with stack as endpoints:
        assert stack.pids == {}

    assert (endpoints.kafka_bootstrap, endpoints.database_url, endpoints.redis_url) == (
        "kafka.example:9092",
        "postgresql://app:secret@db.example:5432/app",
        "redis://cache.example:6379/0",
    )
    assert list(tmp_path.iterdir()) == []


def _start_parent(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """A separate Python process that starts a stack, prints its pids and sleeps."""
    script = textwrap.dedent(
        """
        import json, sys, time
        from pathlib import Path
        from infra.settings import Settings
        from infra.stack import EmbeddedStack

        settings = Settings(kafka_bootstrap="", database_url="", redis_url="")
        stack = EmbeddedStack(settings, data_dir=Path(sys.argv[1]))
        with stack:
            print(json.dumps(stack.pids), flush=True)
            time.sleep(120)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line, f"the parent exited with {parent.wait()} before starting the stack"
    pids: dict[str, int] = json.loads(line)
    return parent, _process_tree(pids)


async def _wait_all_dead(pids: list[int], timeout_s: float = 20) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return alive


async def test_ctrl_c_in_the_parent_stops_every_child(tmp_path: Path) -> None:
    parent, tree = _start_parent(tmp_path)

    parent.send_signal(signal.SIGINT)
    parent.wait(30)

    assert len(tree) >= 3
    assert await _wait_all_dead(tree, timeout_s=1) == []


async def test_a_killed_parent_takes_its_children_with_it(tmp_path: Path) -> None:
    parent, tree = _start_parent(tmp_path)

    parent.kill()
    parent.wait(30)

    assert len(tree) >= 3
    assert await _wait_all_dead(tree) == []
