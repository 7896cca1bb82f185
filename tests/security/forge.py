"""Hostile tokens built by hand: base64url JSON and signatures from `cryptography` or hmac."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

if TYPE_CHECKING:
    from collections.abc import Callable

ISSUER = "https://auth.uait.test"
AUDIENCE = "uait-api"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def part(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


def forge(header: Any, payload: Any, sign: Callable[[bytes], bytes] | None) -> str:
    signing_input = f"{part(header)}.{part(payload)}"
    signature = b"" if sign is None else sign(signing_input.encode())
    return f"{signing_input}.{b64(signature)}"


def ed25519_signer(private_key) -> Callable[[bytes], bytes]:
    return private_key.sign


def rsa_signer(private_key) -> Callable[[bytes], bytes]:
    return lambda data: private_key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def hmac_signer(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def access_payload(now: int, **changes: Any) -> dict[str, Any]:
    payload = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "sid": "session-1",
        "jti": "jti-1",
        "iat": now,
        "nbf": now,
        "exp": now + 900,
        "roles": ["user"],
        "scope": "knowledge:read",
        "amr": ["pwd"],
    }
    for name, value in changes.items():
        if value is ...:
            del payload[name]
        else:
            payload[name] = value
    return payload
