"""Signing key material and the set of keys a process signs and verifies with.

Each key carries its algorithm (EdDSA over Ed25519, or RS256): the algorithm is pinned per key
server-side and a token's header ``alg`` must equal it. Published JWKs are built from an
allowlist of public members, so no private part (``d``, ``p``, ``q`` ...) can leak into JWKS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

PrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey: TypeAlias = ed25519.Ed25519PublicKey | rsa.RSAPublicKey

SUPPORTED_ALGS = ("EdDSA", "RS256")
RSA_BITS = 3072
_PUBLIC_MEMBERS = {"OKP": ("kty", "crv", "x"), "RSA": ("kty", "n", "e")}


class UnsupportedAlgorithmError(ValueError):
    """Raised when a signing algorithm other than EdDSA or RS256 is asked for or stored."""


class NoSigningKeyError(LookupError):
    """Raised when no key is active for signing (none created yet, or only future keys)."""


def check_alg(alg: str) -> str:
    if alg not in SUPPORTED_ALGS:
        raise UnsupportedAlgorithmError(f"signing algorithm {alg!r}; use one of {SUPPORTED_ALGS}")
    return alg


def generate_private_key(alg: str) -> PrivateKey:
    if check_alg(alg) == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


def private_to_pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def private_from_pkcs8(der: bytes, alg: str) -> PrivateKey:
    key = serialization.load_der_private_key(der, password=None)
    expected = ed25519.Ed25519PrivateKey if check_alg(alg) == "EdDSA" else rsa.RSAPrivateKey
    if not isinstance(key, expected):
        raise UnsupportedAlgorithmError(f"stored private key does not fit algorithm {alg}")
    return key


def public_jwk(key: PublicKey, *, kid: str, alg: str) -> dict[str, Any]:
    """RFC 7517 JWK of the public part only, with ``kid``, ``alg`` and ``use: sig``."""
    full: dict[str, Any]
    if isinstance(key, ed25519.Ed25519PublicKey):
        full = dict(OKPAlgorithm.to_jwk(key, as_dict=True))
    elif isinstance(key, rsa.RSAPublicKey):
        full = dict(RSAAlgorithm.to_jwk(key, as_dict=True))
    else:
        raise UnsupportedAlgorithmError(f"not a public key: {type(key).__name__}")
    members = {name: full[name] for name in _PUBLIC_MEMBERS[full["kty"]]}
    return {**members, "kid": kid, "alg": check_alg(alg), "use": "sig"}


def public_from_jwk(jwk: dict[str, Any], alg: str) -> PublicKey:
    members = _PUBLIC_MEMBERS.get(jwk.get("kty", ""), ())
    public = {name: jwk[name] for name in members if name in jwk}
    key = (OKPAlgorithm if check_alg(alg) == "EdDSA" else RSAAlgorithm).from_jwk(public)
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise UnsupportedAlgorithmError(f"stored JWK does not fit algorithm {alg}")
    return key


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_key: PrivateKey = field(repr=False)


@dataclass(frozen=True)
class VerificationKey:
    """A published key: verifies from publication until ``retired_at`` + the longest token TTL."""

    kid: str
    alg: str
    key: PublicKey = field(repr=False)
    activates_at: float
    retired_at: float | None = None
    signer: SigningKey | None = field(default=None, repr=False)

    def signs_at(self, at: float) -> bool:
        return self.activates_at <= at and (self.retired_at is None or at < self.retired_at)


class KeySet:
    """A snapshot of the signing keys, as loaded at ``loaded_at`` (epoch seconds).

    ``signing_key`` is the key active at load time; :meth:`signing_key_at` answers for another
    instant, so a snapshot already holding a pending key switches to it at its activation time
    even before the next reload.
    """

    def __init__(
        self, keys: list[VerificationKey], *, max_token_ttl_s: float, loaded_at: float
    ) -> None:
        self._keys = {key.kid: key for key in keys}
        self.max_token_ttl_s = max_token_ttl_s
        self.loaded_at = loaded_at

    @classmethod
    def generate(
        cls, alg: str = "EdDSA", *, kid: str, max_token_ttl_s: float, loaded_at: float
    ) -> KeySet:
        """A one-key set held only in memory (tests, benchmarks, a process without PostgreSQL)."""
        private = generate_private_key(alg)
        signer = SigningKey(kid=kid, alg=alg, private_key=private)
        key = VerificationKey(kid, alg, private.public_key(), loaded_at, signer=signer)
        return cls([key], max_token_ttl_s=max_token_ttl_s, loaded_at=loaded_at)

    @property
    def signing_key(self) -> SigningKey:
        return self.signing_key_at(self.loaded_at)

    def signing_key_at(self, at: float) -> SigningKey:
        active = [k for k in self._keys.values() if k.signer is not None and k.signs_at(at)]
        if not active:
            raise NoSigningKeyError("no signing key is active; create one with ensure_key")
        newest = max(active, key=lambda k: (k.activates_at, k.kid))
        assert newest.signer is not None
        return newest.signer

    def public_key(self, kid: str, *, at: float | None = None) -> VerificationKey | None:
        """The key named ``kid`` if it still verifies at ``at`` (default: load time)."""
        key = self._keys.get(kid)
        if key is None:
            return None
        at = self.loaded_at if at is None else at
        if key.retired_at is not None and at >= key.retired_at + self.max_token_ttl_s:
            return None
        return key

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        published = [k for k in self._keys.values() if self.public_key(k.kid) is not None]
        return {"keys": [public_jwk(k.key, kid=k.kid, alg=k.alg) for k in published]}
