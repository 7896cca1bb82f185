"""The pieces of token verification that run before and after the signature check."""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

MAX_TOKEN_BYTES = 8192
ACTOR_AUDIENCE = "uait-workers"
_KID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Compact JWS in unpadded base64url only: Python's decoder would skip stray characters, making
# many strings verify as one token.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_ALLOWED_HEADERS = frozenset({"alg", "kid", "typ"})
_REFUSED_HEADERS = ("jku", "x5u", "x5c", "jwk", "crit")


class TokenError(Exception):
    """Raised when a token is refused; ``reason`` is for logs, clients only hear "invalid"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class TokenConfig:
    issuer: str
    audience: str
    access_ttl_s: int = 900
    actor_ttl_s: int = 300
    mfa_ttl_s: int = 300
    leeway_s: int = 30
    actor_audience: str = ACTOR_AUDIENCE

    @property
    def max_token_ttl_s(self) -> int:
        """How long a retired key must keep verifying (pass to ``load_key_set``)."""
        return max(self.access_ttl_s, self.actor_ttl_s, self.mfa_ttl_s) + self.leeway_s


@dataclass(frozen=True)
class Claims:
    """A verified token's claims; times are epoch seconds (JWT NumericDate)."""

    subject: str
    session_id: str | None
    jti: str
    issued_at: int
    not_before: int
    expires_at: int
    roles: tuple[str, ...]
    scopes: tuple[str, ...]
    amr: tuple[str, ...]
    kind: str


@dataclass(frozen=True)
class IssuedToken:
    token: str = field(repr=False)
    claims: Claims
    expires_at: int


@dataclass(frozen=True)
class Kind:
    name: str
    typ: str
    audience: str
    ttl_s: int
    required: tuple[str, ...]


def kinds(config: TokenConfig) -> dict[str, Kind]:
    return {
        "access": Kind(
            "access",
            "at+jwt",
            config.audience,
            config.access_ttl_s,
            ("sid", "roles", "scope", "amr"),
        ),
        "actor": Kind("actor", "actor+jwt", config.actor_audience, config.actor_ttl_s, ("scope",)),
        "mfa": Kind("mfa", "mfa+jwt", config.audience, config.mfa_ttl_s, ("amr",)),
    }


def parse_header(token: str) -> dict[str, Any]:
    if token.count(".") != 2:
        raise TokenError("not a compact JWS of three parts")
    if _COMPACT.fullmatch(token) is None:
        raise TokenError("not unpadded base64url")
    segment = token.partition(".")[0]
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        header = json.loads(raw, object_pairs_hook=_no_duplicates)
    except (binascii.Error, ValueError, RecursionError):
        raise TokenError("header is not base64url JSON") from None
    if not isinstance(header, dict):
        raise TokenError("header is not a JSON object")
    return header


def check_header(header: dict[str, Any], kind: Kind) -> str:
    """The header's kid, once every header rule holds."""
    for name in _REFUSED_HEADERS:
        if name in header:
            raise TokenError(f"header {name!r} refused")
    unknown = set(header) - _ALLOWED_HEADERS
    if unknown:
        raise TokenError(f"header members {sorted(unknown)!r} refused")
    kid = header.get("kid")
    if not isinstance(kid, str):
        raise TokenError("kid missing or not a string")
    if not _KID.fullmatch(kid):
        raise TokenError("kid malformed")
    if not isinstance(header.get("alg"), str):
        raise TokenError("alg missing or not a string")
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower().removeprefix("application/") != kind.typ:
        raise TokenError(f"typ {typ!r} is not {kind.typ}")
    return kid


def claims_from_payload(
    payload: dict[str, Any], kind: Kind, *, now: float | None = None, leeway_s: float = 0
) -> Claims:
    for name in kind.required:
        if name not in payload:
            raise TokenError(f"missing claim {name}")
    times = {name: payload[name] for name in ("iat", "nbf", "exp")}
    if any(type(value) is not int for value in times.values()):
        raise TokenError("iat, nbf and exp must be integers")
    if now is not None:
        if times["exp"] <= now - leeway_s:
            raise TokenError("expired")
        if times["nbf"] > now + leeway_s:
            raise TokenError("not valid yet (nbf)")
        if times["iat"] > now + leeway_s:
            raise TokenError("issued in the future (iat)")
    subject, sid, jti = payload["sub"], payload.get("sid"), payload["jti"]
    if not isinstance(subject, str) or not subject or not isinstance(jti, str):
        raise TokenError("sub and jti must be non-empty strings")
    if sid is not None and not isinstance(sid, str):
        raise TokenError("sid must be a string")
    scope = payload.get("scope", "")
    if not isinstance(scope, str):
        raise TokenError("scope must be a space-separated string")
    return Claims(
        subject=subject,
        session_id=sid,
        jti=jti,
        issued_at=times["iat"],
        not_before=times["nbf"],
        expires_at=times["exp"],
        roles=_strings(payload, "roles"),
        scopes=tuple(scope.split()),
        amr=_strings(payload, "amr"),
        kind=kind.name,
    )


class VerifiedCache:
    """A bounded LRU of verified tokens by SHA-256, answering only before the token's exp."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, tuple[Claims, str]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, digest: bytes, *, kind: str, now: float) -> tuple[Claims, str] | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if now >= entry[0].expires_at:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
        return entry if entry[0].kind == kind else None

    def put(self, digest: bytes, claims: Claims, kid: str) -> None:
        if self._size <= 0:
            return
        with self._lock:
            self._entries[digest] = (claims, kid)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _strings(payload: dict[str, Any], name: str) -> tuple[str, ...]:
    value = payload.get(name, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TokenError(f"{name} must be a list of strings")
    return tuple(value)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("duplicate header member")
    return dict(pairs)
