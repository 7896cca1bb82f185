"""The identity decider: email uniqueness, erasure, roles and keys, without infrastructure."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from events.identity import commands as c
from events.identity import events as e
from workers.aggregate import Aggregate, DomainRuleError
from workers.identity.handlers import IdentityDecider
from workers.identity.user import ApiKeyNotFoundError, EmailTakenError, UserNotFoundError

SEALED = "v1.AAAA"
HMAC_A = "a" * 64
HMAC_B = "b" * 64


class Streams:
    """Aggregates kept across decisions, like one long batch; ``committed`` is the store."""

    def __init__(self) -> None:
        self.loaded: dict[uuid.UUID, Aggregate] = {}

    def get(self, aggregate_id: uuid.UUID, cls: type[Any]) -> Any:
        if aggregate_id not in self.loaded:
            self.loaded[aggregate_id] = cls(aggregate_id)
        aggregate = self.loaded[aggregate_id]
        assert isinstance(aggregate, cls)
        return aggregate

    def events(self) -> list[Any]:
        return [ev for agg in self.loaded.values() for _, ev in agg.pending]


decider = IdentityDecider()


def register(streams: Streams, email_hmac: str = HMAC_A, **kw: Any) -> str:
    user_id = str(uuid.uuid4())
    cmd = c.RegisterUser(
        user_id=user_id, email_hmac=email_hmac, email_sealed=SEALED, name_sealed=SEALED, **kw
    )
    decider.decide(cmd, streams)
    return user_id


def test_a_second_registration_of_the_same_email_is_refused_and_records_nothing():
    streams = Streams()
    register(streams)
    before = len(streams.events())
    with pytest.raises(EmailTakenError):
        register(streams)
    assert len(streams.events()) == before


def test_registering_reserves_the_email_in_its_own_stream_named_by_the_hash():
    streams = Streams()
    user_id = register(streams)
    cmd = c.RegisterUser(
        user_id=user_id, email_hmac=HMAC_A, email_sealed=SEALED, name_sealed=SEALED
    )
    ids = decider.stream_ids(cmd)
    assert ids[0] == uuid.UUID(user_id)
    reserved = [ev for ev in streams.events() if isinstance(ev, e.EmailReserved)]
    assert [(r.email_hmac, r.user_id) for r in reserved] == [(HMAC_A, user_id)]


def test_erasing_a_user_releases_the_email_so_it_can_be_registered_again():
    streams = Streams()
    user_id = register(streams)
    decider.decide(c.DeleteUser(user_id=user_id, email_hmac=HMAC_A), streams)
    assert any(isinstance(ev, e.EmailReleased) for ev in streams.events())
    register(streams)  # does not raise


def test_erasure_with_another_users_email_hash_is_refused():
    streams = Streams()
    user_id = register(streams)
    register(streams, HMAC_B)
    with pytest.raises(UserNotFoundError):
        decider.decide(c.DeleteUser(user_id=user_id, email_hmac=HMAC_B), streams)


def test_an_erased_user_cannot_be_changed():
    streams = Streams()
    user_id = register(streams)
    decider.decide(c.DeleteUser(user_id=user_id, email_hmac=HMAC_A), streams)
    with pytest.raises(UserNotFoundError):
        decider.decide(c.AssignRole(user_id=user_id, role="admin"), streams)


def test_roles_are_assigned_once_and_unknown_roles_are_refused():
    streams = Streams()
    user_id = register(streams)
    assert decider.decide(c.AssignRole(user_id=user_id, role="admin"), streams).detail == "changed"
    assert (
        decider.decide(c.AssignRole(user_id=user_id, role="admin"), streams).detail == "unchanged"
    )
    with pytest.raises(DomainRuleError):
        decider.decide(c.AssignRole(user_id=user_id, role="wizard"), streams)


def test_a_key_is_revoked_once_and_a_rotation_must_name_an_active_key():
    streams = Streams()
    user_id = register(streams)
    create = c.CreateApiKey(user_id=user_id, key_id="KEY000000001", scopes=["knowledge:read"])
    decider.decide(create, streams)
    with pytest.raises(DomainRuleError):
        decider.decide(create, streams)
    decider.decide(c.RevokeApiKey(user_id=user_id, key_id="KEY000000001"), streams)
    with pytest.raises(ApiKeyNotFoundError):
        decider.decide(c.RevokeApiKey(user_id=user_id, key_id="KEY000000001"), streams)
    rotate = c.CreateApiKey(
        user_id=user_id, key_id="KEY000000002", scopes=["knowledge:read"], replaces="KEY000000001"
    )
    with pytest.raises(ApiKeyNotFoundError):
        decider.decide(rotate, streams)


def test_a_disabled_user_cannot_create_keys_but_can_be_erased():
    streams = Streams()
    user_id = register(streams)
    decider.decide(c.DisableUser(user_id=user_id, reason="left"), streams)
    with pytest.raises(DomainRuleError):
        decider.decide(
            c.CreateApiKey(user_id=user_id, key_id="KEY000000003", scopes=["admin"]), streams
        )
    decider.decide(c.DeleteUser(user_id=user_id, email_hmac=HMAC_A), streams)


def test_each_audit_record_is_its_own_stream():
    streams = Streams()
    record = c.RecordAuditEvent(
        user_id=str(uuid.UUID(int=0)), record_id=str(uuid.uuid4()), action="login.failed"
    )
    assert decider.stream_ids(record) == [uuid.UUID(record.record_id)]
    decider.decide(record, streams)
    with pytest.raises(DomainRuleError):
        decider.decide(record, streams)


def test_profile_updates_cannot_carry_a_role():
    with pytest.raises(ValueError, match="role"):
        c.UpdateUserProfile.model_validate(
            {"user_id": str(uuid.uuid4()), "name_sealed": SEALED, "role": "admin"}
        )
