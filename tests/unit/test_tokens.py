"""Issuing and verifying tokens, the verified-token cache, key sets and the key cache."""

from __future__ import annotations

import jwt
import pytest

from security.keyset import (
    KeySet,
    NoSigningKeyError,
    SigningKey,
    VerificationKey,
    generate_private_key,
    public_from_jwk,
)
from security.signing import KeyCache, KeyCacheEmptyError
from security.tokens import TokenConfig, TokenError, Tokens

NOW = 1_800_000_000
CONFIG = TokenConfig(issuer="https://auth.uait.test", audience="uait-api")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(alg="EdDSA", *, cache_size=10_000):
    clock = Clock(NOW)
    keys = KeySet.generate(alg, kid="k1", max_token_ttl_s=CONFIG.max_token_ttl_s, loaded_at=NOW)
    return Tokens(lambda: keys, CONFIG, clock=clock, cache_size=cache_size), clock, keys


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
def test_an_issued_access_token_verifies_to_the_claims_it_was_issued_with(alg):
    tokens, _, _ = make(alg)
    issued = tokens.issue_access(
        subject="user-7",
        session_id="sess-1",
        roles=["user", "editor"],
        scopes=["knowledge:read", "agents:run"],
        amr=["pwd", "otp"],
    )
    claims = tokens.verify_access(issued.token)
    assert claims == issued.claims
    assert claims.subject == "user-7"
    assert claims.session_id == "sess-1"
    assert claims.roles == ("user", "editor")
    assert claims.scopes == ("knowledge:read", "agents:run")
    assert claims.amr == ("pwd", "otp")
    assert claims.kind == "access"
    assert claims.expires_at == issued.expires_at == NOW + 900
    assert jwt.get_unverified_header(issued.token) == {"alg": alg, "kid": "k1", "typ": "at+jwt"}


def test_the_jwt_carries_the_registered_claim_names():
    tokens, _, _ = make()
    issued = tokens.issue_access(
        subject="u", session_id="s", roles=["r"], scopes=["a", "b"], amr=[]
    )
    payload = jwt.decode(issued.token, options={"verify_signature": False})
    assert set(payload) == {
        "iss",
        "aud",
        "sub",
        "sid",
        "jti",
        "iat",
        "nbf",
        "exp",
        "roles",
        "scope",
        "amr",
    }
    assert payload["scope"] == "a b"
    assert payload["aud"] == "uait-api"


def test_every_token_has_its_own_jti():
    tokens, _, _ = make()
    jtis = {tokens.issue_mfa(subject="u") for _ in range(20)}
    assert len(jtis) == 20


def test_an_actor_token_is_for_the_workers_and_short_lived():
    tokens, _, _ = make()
    token = tokens.issue_actor(subject="svc-1", scopes=["knowledge:write"], roles=["service"])
    claims = tokens.verify_actor(token)
    assert claims.kind == "actor"
    assert claims.session_id is None
    assert claims.roles == ("service",)
    assert claims.expires_at - claims.issued_at == 300
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == "uait-workers"


def test_an_mfa_token_only_names_the_user_and_the_first_factor():
    tokens, _, _ = make()
    claims = tokens.verify_mfa(tokens.issue_mfa(subject="user-1"))
    assert (claims.subject, claims.amr, claims.scopes, claims.roles) == ("user-1", ("pwd",), (), ())


def test_a_repeated_verification_is_answered_from_the_cache(monkeypatch):
    tokens, _, _ = make()
    token = tokens.issue_access(subject="u", session_id="s", roles=[], scopes=[], amr=[]).token
    decodes = []
    real = tokens._jwt.decode
    monkeypatch.setattr(tokens._jwt, "decode", lambda *a, **k: decodes.append(1) or real(*a, **k))
    first = tokens.verify_access(token)
    assert tokens.verify_access(token) == first
    assert len(decodes) == 1


def test_the_cache_never_answers_past_the_tokens_expiry():
    tokens, clock, _ = make()
    token = tokens.issue_access(subject="u", session_id="s", roles=[], scopes=[], amr=[]).token
    tokens.verify_access(token)
    clock.now = NOW + 900  # exp reached: the cache stops answering, the leeway still applies
    assert tokens.verify_access(token).subject == "u"
    clock.now = NOW + 931
    with pytest.raises(TokenError, match="expired"):
        tokens.verify_access(token)


def test_a_cached_access_token_is_not_accepted_as_an_mfa_token():
    tokens, _, _ = make()
    token = tokens.issue_access(subject="u", session_id="s", roles=[], scopes=[], amr=[]).token
    tokens.verify_access(token)
    with pytest.raises(TokenError):
        tokens.verify_mfa(token)


def test_the_cache_is_bounded():
    tokens, _, _ = make(cache_size=3)
    for _ in range(10):
        tokens.verify_mfa(tokens.issue_mfa(subject="u"))
    assert len(tokens._cache) == 3


def test_issuing_without_an_active_key_fails_loudly():
    private = generate_private_key("EdDSA")
    pending = VerificationKey(
        "p", "EdDSA", private.public_key(), NOW + 60, signer=SigningKey("p", "EdDSA", private)
    )
    keys = KeySet([pending], max_token_ttl_s=930, loaded_at=NOW)
    with pytest.raises(NoSigningKeyError):
        Tokens(lambda: keys, CONFIG, clock=lambda: NOW).issue_mfa(subject="u")


def test_a_snapshot_switches_to_a_pending_key_at_its_activation_time():
    old, new = generate_private_key("EdDSA"), generate_private_key("EdDSA")
    keys = KeySet(
        [
            VerificationKey(
                "old",
                "EdDSA",
                old.public_key(),
                NOW - 100,
                NOW + 60,
                SigningKey("old", "EdDSA", old),
            ),
            VerificationKey(
                "new", "EdDSA", new.public_key(), NOW + 60, None, SigningKey("new", "EdDSA", new)
            ),
        ],
        max_token_ttl_s=930,
        loaded_at=NOW,
    )
    assert keys.signing_key.kid == "old"
    assert keys.signing_key_at(NOW + 59).kid == "old"
    assert keys.signing_key_at(NOW + 60).kid == "new"
    assert {k["kid"] for k in keys.jwks()["keys"]} == {"old", "new"}


@pytest.mark.parametrize("alg", ["EdDSA", "RS256"])
def test_a_published_jwk_verifies_the_tokens_of_its_key_for_outside_consumers(alg):
    tokens, _, keys = make(alg)
    (jwk,) = keys.jwks()["keys"]
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    token = tokens.issue_mfa(subject="user-3")
    for public in (jwt.PyJWK(jwk).key, public_from_jwk(jwk, alg)):
        payload = jwt.decode(
            token,
            public,
            algorithms=[alg],
            audience="uait-api",
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        assert payload["sub"] == "user-3"


def test_the_key_cache_asks_for_a_reload_at_most_once_per_interval_for_unknown_kids():
    clock = Clock(100.0)
    cache = KeyCache(None, max_token_ttl_s=930, refresh_period_s=30, clock=clock)  # type: ignore[arg-type]
    cache._store(KeySet.generate(kid="k1", max_token_ttl_s=930, loaded_at=NOW))
    assert not cache.due()
    asked = [cache.note_unknown_kid(f"random-{i}") for i in range(50)]
    assert asked == [True] + [False] * 49
    assert cache.due()
    cache._store(cache.get())
    clock.now = 100.5
    assert not cache.note_unknown_kid("again")
    clock.now = 101.0
    assert cache.note_unknown_kid("again")


def test_the_key_cache_is_due_once_its_period_has_passed():
    clock = Clock(0.0)
    cache = KeyCache(None, max_token_ttl_s=930, refresh_period_s=30, clock=clock)  # type: ignore[arg-type]
    assert cache.due()
    with pytest.raises(KeyCacheEmptyError):
        cache.get()
    cache._store(KeySet.generate(kid="k1", max_token_ttl_s=930, loaded_at=NOW))
    clock.now = 29.9
    assert not cache.due()
    clock.now = 30.0
    assert cache.due()


@pytest.mark.parametrize("scopes", [["knowledge:read admin"], [""], ["a\tb"]])
def test_a_scope_that_would_split_into_others_is_refused_at_issue(scopes):
    tokens, _, _ = make()
    with pytest.raises(ValueError, match="scopes"):
        tokens.issue_actor(subject="u", scopes=scopes)
