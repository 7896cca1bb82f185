"""Producers cannot impersonate: commands on Kafka with a forged, missing, borrowed or
out-of-scope actor token are rejected by a real worker, and change nothing."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid

import pytest

from events.envelope import dumps, wrap
from events.identity.commands import AssignRole
from events.ids import command_aggregate_id, document_aggregate_id
from events.knowledge.commands import IngestDocument
from events.outcomes import CommandRejected, CommandSucceeded
from events.topics import command_topic
from security.actors import ActorIssuer
from security.jose import TokenConfig
from security.keyset import KeySet
from security.tokens import Tokens
from tests.integration.test_worker_kafka import (  # noqa: F401  (module-scoped fixtures)
    publisher,
    settings,
    worker,
)

pytestmark = pytest.mark.integration


def ingest() -> IngestDocument:
    return IngestDocument(document_id=f"act-{uuid.uuid4().hex[:10]}", title="T", text="x")


async def send(publisher, command, actor: str, token: str | None):
    envelope = wrap(command, actor=actor, actor_token=token)
    topic = command_topic(command.CONTEXT)
    await publisher.send_raw(topic, dumps(envelope), command.partition_key().encode())
    return envelope


async def outcome(worker, envelope, context: str = "knowledge"):
    store = worker.stores[context]
    wanted = [command_aggregate_id(envelope.message_id)]
    deadline = time.monotonic() + 30
    while not await asyncio.to_thread(store.existing, wanted):
        assert time.monotonic() < deadline, "no outcome within 30 s"
        await asyncio.sleep(0.1)
    streams = await asyncio.to_thread(store.load_streams, wanted)
    [event] = streams[wanted[0]]
    return event, store


async def assert_rejected_and_nothing_changed(worker, envelope, command, reason: str):
    event, store = await outcome(worker, envelope)
    assert isinstance(event, CommandRejected)
    assert event.code == "unauthorized"
    assert reason in event.reason
    streams = await asyncio.to_thread(
        store.load_streams, [document_aggregate_id(command.document_id)]
    )
    assert not streams.get(document_aggregate_id(command.document_id))


async def test_a_correctly_signed_command_is_accepted(worker, publisher):
    command = ingest()
    envelope = await send(publisher, command, "t", publisher.signer("t", command))
    event, _ = await outcome(worker, envelope)
    assert isinstance(event, CommandSucceeded)


async def test_a_command_without_an_actor_token_is_rejected(worker, publisher):
    command = ingest()
    envelope = await send(publisher, command, "t", None)
    await assert_rejected_and_nothing_changed(worker, envelope, command, "no actor token")


async def test_a_token_signed_by_a_key_of_our_own_making_is_rejected(worker, publisher, settings):
    command = ingest()
    # The real key's kid, but a key of our own making: the signature cannot match.
    real = publisher.signer("t", command)
    kid = json.loads(base64.urlsafe_b64decode(real.split(".")[0] + "=="))["kid"]
    rogue = KeySet.generate(kid=kid, max_token_ttl_s=600, loaded_at=time.time())
    config = TokenConfig(issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    forged = ActorIssuer(Tokens(lambda: rogue, config)).issue("t", ("knowledge:write",))
    envelope = await send(publisher, command, "t", forged)
    await assert_rejected_and_nothing_changed(worker, envelope, command, "invalid actor token")


async def test_another_actors_token_cannot_be_borrowed(worker, publisher):
    command = ingest()
    token = publisher.signer("user:someone-else", command)
    envelope = await send(publisher, command, "user:me", token)
    await assert_rejected_and_nothing_changed(worker, envelope, command, "names")


async def test_a_token_without_the_commands_scope_is_rejected(worker, publisher):
    command = ingest()
    # A token signed for a knowledge write cannot carry an identity command needing users:write.
    token = publisher.signer("t", command)
    role = AssignRole(user_id=str(uuid.uuid4()), role="admin")
    envelope = wrap(role, actor="t", actor_token=token)
    await publisher.send_raw(command_topic("identity"), dumps(envelope), role.user_id.encode())
    if "identity" not in worker.stores:
        pytest.skip("this worker serves only the knowledge context")
    event, _ = await outcome(worker, envelope, "identity")
    assert isinstance(event, CommandRejected)
    assert event.code == "unauthorized"
    assert "users:write" in event.reason


async def test_a_tampered_token_is_rejected(worker, publisher):
    command = ingest()
    token = publisher.signer("t", command)
    head, body, sig = token.split(".")
    middle = len(sig) // 2  # a character whose six bits all belong to the signature
    tampered = (
        f"{head}.{body}.{sig[:middle]}{'A' if sig[middle] != 'A' else 'B'}{sig[middle + 1 :]}"
    )
    envelope = await send(publisher, command, "t", tampered)
    await assert_rejected_and_nothing_changed(worker, envelope, command, "invalid actor token")
