"""Opaque refresh tokens: ``rt_`` + 32 random bytes (base64url); only their hash is stored.

SHA-256 is the right hash here, not a slow password hash: the token carries 256 bits of
randomness, so there is nothing to brute-force, and a fast hash keeps lookups by hash cheap.
"""

from __future__ import annotations

import hashlib
import re
import secrets

PREFIX = "rt_"
_SHAPE = re.compile(r"rt_[A-Za-z0-9_-]{43}")


def new_refresh_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def is_refresh_token(value: str) -> bool:
    """Whether ``value`` has the exact shape of a refresh token (checked before any lookup)."""
    return isinstance(value, str) and _SHAPE.fullmatch(value) is not None


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()
