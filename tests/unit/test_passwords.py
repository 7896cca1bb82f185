"""argon2id hashing: verification, rehash on parameter change, constant work for the unknown."""

from __future__ import annotations

import unicodedata

import pytest

from security.passwords import Argon2Params, PasswordCheck, Passwords

CHEAP = Argon2Params(memory_kib=8192, time_cost=1, parallelism=1)


class SpyHasher:
    def __init__(self, real):
        self.real = real
        self.verified = []

    def verify(self, stored, password):
        self.verified.append(stored)
        return self.real.verify(stored, password)


@pytest.fixture(scope="module")
def passwords():
    return Passwords(CHEAP)


def test_the_right_password_verifies_and_a_wrong_one_does_not(passwords):
    stored = passwords.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert passwords.verify(stored, "correct horse battery staple") == PasswordCheck(True, False)
    assert passwords.verify(stored, "correct horse battery stapl") == PasswordCheck(False, False)


def test_the_defaults_are_owasp_argon2id_parameters():
    assert Argon2Params() == Argon2Params(memory_kib=19456, time_cost=2, parallelism=1)


def test_a_password_typed_decomposed_matches_one_stored_composed(passwords):
    stored = passwords.hash(unicodedata.normalize("NFC", "mañana señor"))
    assert passwords.verify(stored, unicodedata.normalize("NFD", "mañana señor")).ok


def test_a_hash_made_with_other_parameters_verifies_and_asks_for_a_rehash(passwords):
    older = Passwords(Argon2Params(memory_kib=8192, time_cost=2, parallelism=1))
    stored = older.hash("pumpkin soup at dawn")
    check = passwords.verify(stored, "pumpkin soup at dawn")
    assert check == PasswordCheck(ok=True, needs_rehash=True)
    assert passwords.verify(passwords.hash("pumpkin soup at dawn"), "pumpkin soup at dawn") == (
        PasswordCheck(ok=True, needs_rehash=False)
    )


def test_a_wrong_password_against_old_parameters_does_not_ask_for_a_rehash(passwords):
    stored = Passwords(Argon2Params(memory_kib=8192, time_cost=2, parallelism=1)).hash("a b c d")
    assert passwords.verify(stored, "wrong guess") == PasswordCheck(False, False)


def test_an_unknown_user_is_refused_after_doing_the_same_hash_work(passwords, monkeypatch):
    spy = SpyHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", spy)
    assert passwords.verify(None, "anything at all") == PasswordCheck(False, False)
    assert spy.verified == [passwords._dummy]
    assert "m=8192,t=1,p=1" in passwords._dummy


@pytest.mark.parametrize(
    "stored",
    ["", "garbage", "$argon2id$v=19$m=8192,t=1,p=1$AAAA", "$2b$12$" + "a" * 53, "$argon2id$"],
)
def test_a_malformed_stored_hash_is_refused_without_an_exception_after_the_dummy_work(
    passwords, stored, monkeypatch
):
    spy = SpyHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", spy)
    assert passwords.verify(stored, "whatever password") == PasswordCheck(False, False)
    assert spy.verified[-1] == passwords._dummy


def test_a_malformed_hash_costs_the_same_hash_work_as_an_unknown_user(passwords, monkeypatch):
    spy = SpyHasher(passwords._hasher)
    monkeypatch.setattr(passwords, "_hasher", spy)
    assert passwords.verify("$argon2id$garbage", "a wrong guess") == PasswordCheck(False, False)
    # The malformed hash is tried, then the dummy hash does the real work.
    assert spy.verified == ["$argon2id$garbage", passwords._dummy]
