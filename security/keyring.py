"""Envelope encryption under key-encryption keys (KEKs) read from a setting.

The setting is ``"kid1:<base64 32 bytes>,kid2:<...>"``: the first key encrypts, every listed key
decrypts, so a KEK is rotated by putting a new key first, re-wrapping stored blobs with
:meth:`Keyring.rewrap`, then dropping the old key from the setting.

A blob is ``format byte | kid length | kid | 96-bit nonce | AES-256-GCM ciphertext and tag``.
The header (format, kid) is authenticated together with the caller's ``aad``, which binds a blob
to its place (a signing key's id, a user's id): a blob copied elsewhere does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from collections.abc import Mapping

FORMAT_V1 = 1
NONCE_BYTES = 12
KEY_BYTES = 32
_KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class KeyringError(ValueError):
    """Raised when a keyring setting is malformed or holds a key that is not 32 bytes."""


class DecryptionError(ValueError):
    """Raised when a blob or token does not decrypt: wrong key or aad, tampered, or unknown kid."""


class Keyring:
    """KEKs by id; the current one encrypts, all of them decrypt."""

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        if not keys:
            raise KeyringError("a keyring needs at least one key")
        if current not in keys:
            raise KeyringError(f"the current key id {current!r} is not in the keyring")
        for kid, key in keys.items():
            if not _KID.fullmatch(kid):
                raise KeyringError(f"key id {kid!r} must be 1-64 of A-Z a-z 0-9 _ . -")
            if len(key) != KEY_BYTES:
                raise KeyringError(f"key {kid!r} is {len(key)} bytes; a KEK is {KEY_BYTES} bytes")
        self._aead = {kid: AESGCM(key) for kid, key in keys.items()}
        self._current = current

    @classmethod
    def from_setting(cls, value: str) -> Keyring:
        """Parse ``"kid1:<base64>,kid2:<base64>"``; the first entry is the current key."""
        keys: dict[str, bytes] = {}
        entries = [entry.strip() for entry in value.split(",")]
        if not value.strip() or any(not entry for entry in entries):
            raise KeyringError("a keyring setting is 'kid:<base64 32 bytes>' entries joined by ','")
        for position, entry in enumerate(entries, start=1):
            kid, sep, encoded = entry.partition(":")
            kid = kid.strip()
            if not sep or not kid:
                raise KeyringError(f"keyring entry {position} is not 'kid:<base64 key>'")
            if kid in keys:
                raise KeyringError(f"key id {kid!r} appears twice in the keyring")
            keys[kid] = _decode_key(kid, encoded.strip())
        return cls(keys, current=entries[0].partition(":")[0].strip())

    @staticmethod
    def generate_setting(kid: str | None = None) -> str:
        """A fresh one-key setting value (kid defaults to a random ``k<hex>``)."""
        kid = kid or f"k{secrets.token_hex(4)}"
        if not _KID.fullmatch(kid):
            raise KeyringError(f"key id {kid!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        return f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"

    @property
    def current_kid(self) -> str:
        return self._current

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._aead)

    def encrypt(self, plaintext: bytes, *, aad: bytes) -> bytes:
        header = _header(self._current)
        nonce = secrets.token_bytes(NONCE_BYTES)
        return header + nonce + self._aead[self._current].encrypt(nonce, plaintext, header + aad)

    def decrypt(self, blob: bytes, *, aad: bytes) -> bytes:
        kid, header = self._parse_header(blob)
        aead = self._aead.get(kid)
        if aead is None:
            raise DecryptionError(f"blob was encrypted under key {kid!r}, not in the keyring")
        body = blob[len(header) :]
        if len(body) < NONCE_BYTES + 16:
            raise DecryptionError("blob is truncated")
        try:
            return aead.decrypt(body[:NONCE_BYTES], body[NONCE_BYTES:], header + aad)
        except InvalidTag:
            raise DecryptionError("blob does not decrypt: wrong aad or tampered") from None

    def kid_of(self, blob: bytes) -> str:
        """The id of the KEK a blob was encrypted under (to find blobs needing a rewrap)."""
        return self._parse_header(blob)[0]

    def rewrap(self, blob: bytes, *, aad: bytes) -> bytes:
        """Re-encrypt under the current KEK (any KEK in the ring can have made the blob)."""
        return self.encrypt(self.decrypt(blob, aad=aad), aad=aad)

    def __repr__(self) -> str:
        return f"Keyring(current={self._current!r}, kids={list(self._aead)!r})"

    @staticmethod
    def _parse_header(blob: bytes) -> tuple[str, bytes]:
        if len(blob) < 2 or blob[0] != FORMAT_V1:
            raise DecryptionError("not a keyring blob of a known format")
        end = 2 + blob[1]
        try:
            kid = blob[2:end].decode("ascii")
        except UnicodeDecodeError:
            raise DecryptionError("blob header is corrupt") from None
        if len(blob) < end or not _KID.fullmatch(kid):
            raise DecryptionError("blob header is corrupt")
        return kid, blob[:end]


def _header(kid: str) -> bytes:
    raw = kid.encode("ascii")
    return bytes((FORMAT_V1, len(raw))) + raw


def _decode_key(kid: str, encoded: str) -> bytes:
    # Standard and URL-safe alphabets both accepted; padding optional.
    normalised = encoded.replace("-", "+").replace("_", "/")
    normalised += "=" * (-len(normalised) % 4)
    try:
        key = base64.b64decode(normalised, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f"key {kid!r} is not valid base64") from None
    if len(key) != KEY_BYTES:
        raise KeyringError(f"key {kid!r} is {len(key)} bytes; a KEK is {KEY_BYTES} bytes")
    return key
