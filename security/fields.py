"""Per-record data keys: personal data in events is sealed with a key kept outside the store.

Destroying a record's data key (crypto-shredding) erases what the append-only events hold: the
tokens stay, and nothing can open them. A token is ``v1.<base64url(nonce | ciphertext | tag)>``,
plain ASCII, safe inside JSON events. The ``aad`` names what the value is (e.g.
``"user:<id>:email"``) so a token moved to another field or record does not open.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from security.keyring import DecryptionError

_PREFIX = "v1."
_NONCE = 12
_TOKEN = re.compile(r"v1\.[A-Za-z0-9_-]{38,}")


def new_data_key() -> bytes:
    return secrets.token_bytes(32)


def seal(data_key: bytes, value: str, *, aad: str) -> str:
    nonce = secrets.token_bytes(_NONCE)
    sealed = _aead(data_key).encrypt(nonce, value.encode("utf-8"), _aad(aad))
    return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")


def unseal(data_key: bytes, token: str, *, aad: str) -> str:
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise DecryptionError("not a sealed v1 token")
    encoded = token[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise DecryptionError("sealed token is not base64url") from None
    try:
        plain = _aead(data_key).decrypt(raw[:_NONCE], raw[_NONCE:], _aad(aad))
    except InvalidTag:
        raise DecryptionError("sealed token does not open: wrong key or aad, or tampered") from None
    return plain.decode("utf-8")


def _aead(data_key: bytes) -> AESGCM:
    if len(data_key) != 32:
        raise ValueError(f"a data key is 32 bytes, not {len(data_key)}")
    return AESGCM(data_key)


def _aad(aad: str) -> bytes:
    return b"uait-field-v1\x00" + aad.encode("utf-8")
