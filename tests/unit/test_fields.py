"""Sealed personal data: a per-record key opens it; without that key nothing does."""

from __future__ import annotations

import json

import pytest

from security.fields import new_data_key, seal, unseal
from security.keyring import DecryptionError


def test_a_sealed_value_opens_with_its_key_and_aad_and_is_json_safe_ascii():
    key = new_data_key()
    token = seal(key, "Zoë Ærø <zoe@example.com>", aad="user:1:email")
    assert token.startswith("v1.")
    assert token.isascii()
    assert json.loads(json.dumps({"email": token}))["email"] == token
    assert "zoe" not in token
    assert unseal(key, token, aad="user:1:email") == "Zoë Ærø <zoe@example.com>"


def test_a_destroyed_key_cannot_be_replaced_by_another_one():
    token = seal(new_data_key(), "alice@example.com", aad="user:1:email")
    with pytest.raises(DecryptionError):
        unseal(new_data_key(), token, aad="user:1:email")


def test_a_token_moved_to_another_field_or_user_does_not_open():
    key = new_data_key()
    token = seal(key, "Alice", aad="user:1:name")
    for aad in ("user:1:email", "user:2:name", ""):
        with pytest.raises(DecryptionError):
            unseal(key, token, aad=aad)


@pytest.mark.parametrize(
    "mangle",
    [
        # A character inside the data (the last one may carry only padding bits, which a
        # decoder ignores, so changing it might not change the bytes at all).
        lambda t: t[:20] + ("A" if t[20] != "A" else "B") + t[21:],
        lambda t: t[:10] + t[11:],
        lambda t: "v2." + t[3:],
        lambda t: t.replace("v1.", ""),
        lambda t: t + "!",
        lambda t: "v1.",
        lambda t: "v1.AAAA",
    ],
)
def test_tampered_or_malformed_tokens_are_refused(mangle):
    key = new_data_key()
    token = seal(key, "a value long enough", aad="a")
    with pytest.raises(DecryptionError):
        unseal(key, mangle(token), aad="a")


def test_data_keys_are_32_random_bytes_and_other_lengths_are_refused():
    assert len(new_data_key()) == 32
    assert new_data_key() != new_data_key()
    with pytest.raises(ValueError, match="32 bytes"):
        seal(b"short", "x", aad="a")
