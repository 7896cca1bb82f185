"""An in-memory key set (one Ed25519 and one RSA key) and a clock the tests move by hand."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from security.keyset import KeySet, SigningKey, VerificationKey
from security.tokens import TokenConfig, Tokens
from tests.security.forge import AUDIENCE, ISSUER

NOW = 1_800_000_000
TTL = 930  # access TTL 900 + leeway 30


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="session")
def ed_private():
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def rsa_private():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def old_private():
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def key_set(ed_private, rsa_private, old_private):
    """`ed` signs; `rsa` verifies (retired a minute ago); `old` was retired two hours ago."""
    return KeySet(
        [
            VerificationKey(
                "ed",
                "EdDSA",
                ed_private.public_key(),
                NOW - 60,
                signer=SigningKey("ed", "EdDSA", ed_private),
            ),
            VerificationKey("rsa", "RS256", rsa_private.public_key(), NOW - 3600, NOW - 60),
            VerificationKey("old", "EdDSA", old_private.public_key(), NOW - 9000, NOW - 7200),
        ],
        max_token_ttl_s=TTL,
        loaded_at=NOW,
    )


@pytest.fixture
def unknown_kids():
    return []


@pytest.fixture
def tokens(key_set, clock, unknown_kids):
    config = TokenConfig(issuer=ISSUER, audience=AUDIENCE)
    return Tokens(lambda: key_set, config, clock=clock, on_unknown_kid=unknown_kids.append)
