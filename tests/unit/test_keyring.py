"""Envelope encryption under KEKs: round trips, refusals, rotation and rewrap."""

from __future__ import annotations

import base64

import pytest

from security.keyring import DecryptionError, Keyring, KeyringError


def ring(*kids: str) -> tuple[Keyring, str]:
    setting = ",".join(Keyring.generate_setting(kid) for kid in kids)
    return Keyring.from_setting(setting), setting


def test_a_blob_decrypts_to_its_plaintext_with_the_same_aad():
    keyring, _ = ring("a")
    blob = keyring.encrypt(b"private key bytes", aad=b"kid-1")
    assert keyring.decrypt(blob, aad=b"kid-1") == b"private key bytes"
    assert b"private key bytes" not in blob


def test_two_encryptions_of_the_same_plaintext_differ():
    keyring, _ = ring("a")
    assert keyring.encrypt(b"x", aad=b"") != keyring.encrypt(b"x", aad=b"")


def test_a_blob_does_not_decrypt_under_another_aad():
    keyring, _ = ring("a")
    blob = keyring.encrypt(b"secret", aad=b"kid-1")
    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, aad=b"kid-2")


@pytest.mark.parametrize("position", [0, 1, 3, 20, -1])
def test_a_blob_with_any_byte_flipped_does_not_decrypt(position):
    keyring, _ = ring("a")
    blob = bytearray(keyring.encrypt(b"secret value", aad=b"x"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        keyring.decrypt(bytes(blob), aad=b"x")


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x01\x05ab", b"\x02\x01a" + b"0" * 40])
def test_truncated_or_foreign_blobs_are_refused(blob):
    keyring, _ = ring("a")
    with pytest.raises(DecryptionError):
        keyring.decrypt(blob, aad=b"")


def test_a_blob_from_an_unknown_kek_is_refused_naming_its_kid():
    first, _ = ring("old")
    second, _ = ring("new")
    with pytest.raises(DecryptionError, match="old"):
        second.decrypt(first.encrypt(b"x", aad=b""), aad=b"")


def test_after_a_new_kek_is_put_first_old_blobs_still_decrypt_and_new_ones_use_it():
    old_ring, old_setting = ring("k1")
    blob = old_ring.encrypt(b"signing key", aad=b"kid")
    rotated = Keyring.from_setting(Keyring.generate_setting("k2") + "," + old_setting)
    assert rotated.current_kid == "k2"
    assert rotated.decrypt(blob, aad=b"kid") == b"signing key"
    assert rotated.kid_of(rotated.encrypt(b"y", aad=b"")) == "k2"


def test_rewrap_moves_a_blob_to_the_current_kek_so_the_old_one_can_be_dropped():
    old_ring, old_setting = ring("k1")
    new_setting = Keyring.generate_setting("k2")
    blob = old_ring.encrypt(b"signing key", aad=b"kid")
    rewrapped = Keyring.from_setting(new_setting + "," + old_setting).rewrap(blob, aad=b"kid")
    only_new = Keyring.from_setting(new_setting)
    assert only_new.kid_of(rewrapped) == "k2"
    assert only_new.decrypt(rewrapped, aad=b"kid") == b"signing key"
    with pytest.raises(DecryptionError):
        only_new.decrypt(blob, aad=b"kid")


def test_a_url_safe_unpadded_key_is_accepted():
    key = bytes(range(32))
    encoded = base64.urlsafe_b64encode(key).decode().rstrip("=")
    keyring = Keyring.from_setting(f"k:{encoded}")
    assert keyring.decrypt(keyring.encrypt(b"v", aad=b""), aad=b"") == b"v"


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("", "entries"),
        ("   ", "entries"),
        ("k1", "not 'kid:<base64 key>'"),
        (":" + base64.b64encode(bytes(32)).decode(), "not 'kid:<base64 key>'"),
        ("k1:" + base64.b64encode(bytes(16)).decode(), "16 bytes"),
        ("k1:" + base64.b64encode(bytes(33)).decode(), "33 bytes"),
        ("k1:not*base64!", "not valid base64"),
        ("k1:" + base64.b64encode(bytes(32)).decode() + ",", "entries"),
        ("bad kid:" + base64.b64encode(bytes(32)).decode(), "key id"),
    ],
)
def test_malformed_settings_are_refused_with_a_clear_message(setting, message):
    with pytest.raises(KeyringError, match=message):
        Keyring.from_setting(setting)


def test_a_kid_listed_twice_is_refused():
    one = Keyring.generate_setting("k1")
    with pytest.raises(KeyringError, match="twice"):
        Keyring.from_setting(f"{one},{one}")


def test_a_keyring_error_never_echoes_key_material():
    bad = base64.b64encode(b"S" * 20).decode()
    with pytest.raises(KeyringError) as caught:
        Keyring.from_setting(f"k1:{bad}")
    assert bad not in str(caught.value)
    keyring, setting = ring("k1")
    assert setting.partition(":")[2] not in repr(keyring)
