"""TOTP: window edges, replay blocking, strict code shape; recovery codes."""

from __future__ import annotations

import urllib.parse

import pyotp
import pytest

from security.totp import (
    hash_recovery_code,
    is_replay,
    match_totp,
    new_recovery_codes,
    new_totp_secret,
    provisioning_uri,
)

SECRET = new_totp_secret()
T = 1_800_000_015.0  # inside step 60_000_000
STEP = 60_000_000


def code_at_step(step):
    return pyotp.TOTP(SECRET).generate_otp(step)


def test_a_secret_is_160_bits_of_base32():
    assert len(SECRET) == 32
    assert set(SECRET) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert new_totp_secret() != SECRET


def test_the_current_code_matches_its_own_step():
    assert match_totp(SECRET, code_at_step(STEP), at=T) == STEP


@pytest.mark.parametrize("offset", [-1, 1])
def test_codes_one_step_away_are_accepted_with_window_one(offset):
    assert match_totp(SECRET, code_at_step(STEP + offset), at=T) == STEP + offset


@pytest.mark.parametrize("offset", [-2, 2])
def test_codes_two_steps_away_are_refused_with_window_one(offset):
    code = code_at_step(STEP + offset)
    if code in {code_at_step(STEP + d) for d in (-1, 0, 1)}:
        pytest.skip("a one-in-a-million collision of codes between steps")
    assert match_totp(SECRET, code, at=T) is None


def test_window_zero_accepts_only_the_current_step():
    if code_at_step(STEP - 1) == code_at_step(STEP):
        pytest.skip("a one-in-a-million collision of codes between steps")
    assert match_totp(SECRET, code_at_step(STEP - 1), at=T, valid_window=0) is None
    assert match_totp(SECRET, code_at_step(STEP), at=T, valid_window=0) == STEP


def test_the_step_boundary_is_at_multiples_of_thirty_seconds():
    start = STEP * 30.0
    assert match_totp(SECRET, code_at_step(STEP), at=start, valid_window=0) == STEP
    assert match_totp(SECRET, code_at_step(STEP), at=start - 0.001, valid_window=0) is None


@pytest.mark.parametrize(
    "code",
    ["", "12345", "1234567", "12345a", " 123456", "123456\n", "١٢٣٤٥٦", "12 456", None, 123456],
)
def test_anything_but_six_ascii_digits_is_refused_without_an_exception(code):
    assert match_totp(SECRET, code, at=T) is None


def test_a_used_step_and_any_earlier_one_are_replays_and_a_later_one_is_not():
    assert not is_replay(STEP, None)
    assert is_replay(STEP, STEP)
    assert is_replay(STEP - 1, STEP)
    assert not is_replay(STEP + 1, STEP)


def test_a_code_used_once_is_refused_the_second_time_by_the_step_check():
    last_used = None
    step = match_totp(SECRET, code_at_step(STEP), at=T)
    assert step is not None
    assert not is_replay(step, last_used)
    last_used = step
    again = match_totp(SECRET, code_at_step(STEP), at=T + 10)
    assert again is not None
    assert is_replay(again, last_used)


def test_the_provisioning_uri_names_issuer_account_and_secret():
    uri = provisioning_uri(SECRET, account="ada@example.com", issuer="UAIT")
    parsed = urllib.parse.urlparse(uri)
    query = urllib.parse.parse_qs(parsed.query)
    assert parsed.scheme == "otpauth"
    assert parsed.netloc == "totp"
    assert query["secret"] == [SECRET]
    assert query["issuer"] == ["UAIT"]
    assert "ada%40example.com" in parsed.path or "ada@example.com" in parsed.path


def test_recovery_codes_are_ten_distinct_codes_of_sixty_bits():
    codes = new_recovery_codes()
    assert len(codes) == len(set(codes)) == 10
    for code in codes:
        groups = code.split("-")
        assert [len(g) for g in groups] == [4, 4, 4]
        assert set("".join(groups)) <= set("0123456789abcdefghjkmnpqrstvwxyz")


def test_a_recovery_code_hashes_the_same_whatever_its_case_dashes_or_look_alikes():
    code = "7k2m-9xq4-hw3d"
    assert hash_recovery_code(code) == hash_recovery_code("7K2M9XQ4HW3D")
    assert hash_recovery_code(code) == hash_recovery_code(" 7k2m 9xq4 hw3d ")
    assert hash_recovery_code("0000-1111-aaaa") == hash_recovery_code("oooo-iiLl-AAAA")
    assert hash_recovery_code(code) != hash_recovery_code("7k2m-9xq4-hw3e")
    assert len(hash_recovery_code(code)) == 32
