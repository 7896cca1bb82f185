"""API keys ``uait_<public id>_<secret>``, shown once; only the secret's SHA-256 is stored.

The public id (12 lower-case base32 characters, 60 bits) finds the row; the secret (43 base62
characters, more than 256 bits) is checked against the stored hash in constant time. A fast
hash is right for a secret of that entropy. Parsing is strict: anything not of exactly this
shape is refused before any database work.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass, field

PREFIX = "uait_"
PUBLIC_ID_LENGTH = 12
SECRET_LENGTH = 43
_PUBLIC_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_SECRET_ALPHABET = string.digits + string.ascii_letters
_SHAPE = re.compile(r"uait_([a-z2-7]{12})_([0-9A-Za-z]{43})")
_LENGTH = len(PREFIX) + PUBLIC_ID_LENGTH + 1 + SECRET_LENGTH


@dataclass(frozen=True)
class NewApiKey:
    token: str = field(repr=False)
    public_id: str
    secret_hash: bytes = field(repr=False)


def new_api_key() -> NewApiKey:
    public_id = "".join(secrets.choice(_PUBLIC_ALPHABET) for _ in range(PUBLIC_ID_LENGTH))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return NewApiKey(f"{PREFIX}{public_id}_{secret}", public_id, hash_api_key_secret(secret))


def parse_api_key(value: str) -> tuple[str, str] | None:
    """``(public_id, secret)``, or None for anything that is not exactly an API key."""
    if not isinstance(value, str) or len(value) != _LENGTH:
        return None
    match = _SHAPE.fullmatch(value)
    return None if match is None else (match.group(1), match.group(2))


def hash_api_key_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def verify_api_key_secret(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_api_key_secret(secret), stored_hash)
