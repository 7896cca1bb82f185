"""The identity context on the real event store: one owner per email under concurrency."""

from __future__ import annotations

import itertools
import threading
import uuid
from typing import TYPE_CHECKING

import pytest

from events.envelope import dumps, wrap
from events.identity.commands import RegisterUser
from events.identity.events import EmailReserved, UserRegistered
from events.ids import email_reservation_id
from events.outcomes import CommandRejected, CommandSucceeded
from events.stored import decode
from infra.eventstore import open_factory
from infra.migrate import migrate
from infra.stack import eventsourcing_env
from workers.aggregate_store import AggregateStore
from workers.batch import BatchProcessor
from workers.identity.handlers import IdentityDecider
from workers.items import Record

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration
_offsets = itertools.count()


@pytest.fixture(scope="module")
def store(endpoints: Endpoints) -> Iterator[AggregateStore]:
    migrate(endpoints.database_url)
    factory = open_factory("identity", eventsourcing_env(endpoints.database_url))
    yield AggregateStore("identity", factory)
    factory.close()


def test_concurrent_registrations_of_one_email_give_exactly_one_user(store: AggregateStore):
    email_hmac = uuid.uuid4().hex * 2
    commands = [
        RegisterUser(
            user_id=str(uuid.uuid4()),
            email_hmac=email_hmac,
            email_sealed="v1.AAAA",
            name_sealed="v1.AAAA",
        )
        for _ in range(12)
    ]
    reports = []
    barrier = threading.Barrier(len(commands))

    def register(command: RegisterUser) -> None:
        # Each in its own processor and transaction, all at once: like twelve partitions.
        processor = BatchProcessor(AggregateStore("identity", store.factory), IdentityDecider())
        record = Record(
            "uait.commands.identity", 0, next(_offsets), dumps(wrap(command, actor="t")), None
        )
        barrier.wait()
        reports.append(processor.process([record]))

    threads = [threading.Thread(target=register, args=(c,)) for c in commands]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes = [o for r in reports for o in r.outcomes.values()]
    assert sorted(outcomes) == ["rejected"] * 11 + ["succeeded"]
    reservation = store.load_streams([email_reservation_id(email_hmac)])
    events = reservation[email_reservation_id(email_hmac)]
    assert len(events) == 1
    assert isinstance(events[0], EmailReserved)
    winner = events[0].user_id
    users = store.load_streams([uuid.UUID(c.user_id) for c in commands])
    registered = [uid for uid, evs in users.items() if evs]
    assert registered == [uuid.UUID(winner)]
    assert isinstance(users[uuid.UUID(winner)][0], UserRegistered)
    notes = store.recorder.select_notifications(start=0, limit=10**6)
    kinds = [decode(n.topic, n.state).event for n in notes]
    assert sum(isinstance(k, CommandSucceeded) for k in kinds) >= 1
    assert any(isinstance(k, CommandRejected) and "already registered" in k.reason for k in kinds)
