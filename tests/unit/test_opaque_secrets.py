"""Refresh tokens and API keys: shapes, hashes, strict parsing."""

from __future__ import annotations

import hashlib

import pytest

from security.apikeys import new_api_key, parse_api_key, verify_api_key_secret
from security.refresh import hash_token, is_refresh_token, new_refresh_token


def test_a_refresh_token_is_rt_and_43_base64url_characters_and_unique():
    token = new_refresh_token()
    assert token.startswith("rt_")
    assert len(token) == 46
    assert is_refresh_token(token)
    assert new_refresh_token() != token


def test_a_refresh_token_hash_is_its_sha256():
    token = new_refresh_token()
    assert hash_token(token) == hashlib.sha256(token.encode()).digest()
    assert hash_token(token) != hash_token(new_refresh_token())


@pytest.mark.parametrize("value", ["", "rt_", "rt_abc", "xx_" + "a" * 43, "rt_" + "a" * 42 + "!"])
def test_values_not_shaped_like_refresh_tokens_are_told_apart(value):
    assert not is_refresh_token(value)


def test_a_new_api_key_parses_back_to_its_id_and_a_secret_matching_the_hash():
    key = new_api_key()
    parsed = parse_api_key(key.token)
    assert parsed is not None
    public_id, secret = parsed
    assert public_id == key.public_id
    assert len(public_id) == 12
    assert len(secret) == 43
    assert "_" not in secret
    assert verify_api_key_secret(secret, key.secret_hash)
    assert key.token not in repr(key)


def test_a_wrong_secret_does_not_verify():
    key = new_api_key()
    other = parse_api_key(new_api_key().token)
    assert other is not None
    assert not verify_api_key_secret(other[1], key.secret_hash)


def test_two_api_keys_differ_in_id_and_secret():
    a, b = new_api_key(), new_api_key()
    assert a.public_id != b.public_id
    assert a.secret_hash != b.secret_hash


GOOD = "uait_abcdefgh2345_" + "A1b2C3d4E5" * 4 + "xyz"


def test_the_reference_shape_parses():
    assert parse_api_key(GOOD) == ("abcdefgh2345", "A1b2C3d4E5" * 4 + "xyz")


@pytest.mark.parametrize(
    "value",
    [
        "",
        "uait_",
        GOOD[:-1],
        GOOD + "z",
        GOOD.replace("uait_", "UAIT_"),
        GOOD.replace("uait_", "uaiz_"),
        GOOD.replace("abcdefgh2345", "abcdefgh234"),
        GOOD.replace("abcdefgh2345", "abcdefgh23456"),
        GOOD.replace("abcdefgh2345", "ABCDEFGH2345"),
        GOOD.replace("abcdefgh2345", "abcdefgh2341"),  # 1 is not base32
        GOOD.replace("_A1b", "-A1b"),
        GOOD[:-1] + "_",
        GOOD[:-1] + "-",
        GOOD[:-1] + "é",
        GOOD[:-1] + "٣",
        GOOD[:-1] + "\n",
        " " + GOOD[1:],
        GOOD.replace("uait_abcdefgh2345_", "uait__abcdefgh2345"),
        "a" * 61,
        "uait_" + "a" * 100,
        None,
        12345,
    ],
)
def test_every_malformed_shape_is_refused(value):
    assert parse_api_key(value) is None
