"""Hostile JWTs, built by hand, each refused by the verifier for the reason it should be."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from security.jose import TokenError
from tests.security.conftest import NOW
from tests.security.forge import (
    access_payload,
    b64,
    ed25519_signer,
    forge,
    hmac_signer,
    part,
    rsa_signer,
)

ED_HEADER = {"alg": "EdDSA", "kid": "ed", "typ": "at+jwt"}
RSA_HEADER = {"alg": "RS256", "kid": "rsa", "typ": "at+jwt"}


def refused(verify, token, reason):
    with pytest.raises(TokenError) as caught:
        verify(token)
    assert reason in caught.value.reason, caught.value.reason
    return caught.value


def ed_token(ed_private, header=None, **changes):
    return forge(header or ED_HEADER, access_payload(NOW, **changes), ed25519_signer(ed_private))


# The baseline: the same hand-built tokens, unaltered, are accepted. Without these, every
# refusal below could come from a broken forge rather than from the verifier.


def test_a_hand_built_eddsa_token_with_every_claim_right_is_accepted(tokens, ed_private):
    claims = tokens.verify_access(ed_token(ed_private))
    assert (claims.subject, claims.session_id, claims.scopes) == (
        "user-1",
        "session-1",
        ("knowledge:read",),
    )


def test_a_hand_built_rs256_token_of_a_recently_retired_key_is_accepted(tokens, rsa_private):
    token = forge(RSA_HEADER, access_payload(NOW), rsa_signer(rsa_private))
    assert tokens.verify_access(token).subject == "user-1"


# alg


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
def test_alg_none_with_an_empty_signature_is_refused(tokens, alg):
    token = forge({**ED_HEADER, "alg": alg}, access_payload(NOW), None)
    assert token.endswith(".")
    refused(tokens.verify_access, token, "not the pinned EdDSA")


def test_hs256_signed_with_the_ed25519_public_key_raw_bytes_is_refused(tokens, ed_private):
    raw = ed_private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    token = forge({**ED_HEADER, "alg": "HS256"}, access_payload(NOW), hmac_signer(raw))
    refused(tokens.verify_access, token, "not the pinned EdDSA")


def test_hs256_signed_with_the_ed25519_public_key_pem_is_refused(tokens, ed_private):
    pem = ed_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = forge({**ED_HEADER, "alg": "HS256"}, access_payload(NOW), hmac_signer(pem))
    refused(tokens.verify_access, token, "not the pinned EdDSA")


def test_hs256_signed_with_the_published_jwk_x_value_is_refused(tokens, key_set):
    jwk = next(k for k in key_set.jwks()["keys"] if k["kid"] == "ed")
    token = forge(
        {**ED_HEADER, "alg": "HS256"}, access_payload(NOW), hmac_signer(jwk["x"].encode())
    )
    refused(tokens.verify_access, token, "not the pinned EdDSA")


def test_hs256_signed_with_the_rsa_public_key_pem_is_refused(tokens, rsa_private):
    pem = rsa_private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = forge({**RSA_HEADER, "alg": "HS256"}, access_payload(NOW), hmac_signer(pem))
    refused(tokens.verify_access, token, "not the pinned RS256")


def test_rs256_claimed_for_an_eddsa_kid_and_signed_by_an_attacker_rsa_key_is_refused(tokens):
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = forge({**ED_HEADER, "alg": "RS256"}, access_payload(NOW), rsa_signer(attacker))
    refused(tokens.verify_access, token, "not the pinned EdDSA")


def test_eddsa_claimed_for_an_rsa_kid_is_refused(tokens):
    attacker = ed25519.Ed25519PrivateKey.generate()
    token = forge({**RSA_HEADER, "alg": "EdDSA"}, access_payload(NOW), ed25519_signer(attacker))
    refused(tokens.verify_access, token, "not the pinned RS256")


@pytest.mark.parametrize("alg", [None, 1, ["EdDSA"]])
def test_a_missing_or_non_string_alg_is_refused(tokens, ed_private, alg):
    header = {"kid": "ed", "typ": "at+jwt"} if alg is None else {**ED_HEADER, "alg": alg}
    refused(tokens.verify_access, ed_token(ed_private, header), "alg missing")


# kid


def test_a_missing_kid_is_refused(tokens, ed_private):
    header = {"alg": "EdDSA", "typ": "at+jwt"}
    refused(tokens.verify_access, ed_token(ed_private, header), "kid missing")


@pytest.mark.parametrize("kid", [1, None, ["ed"], {"kid": "ed"}, True])
def test_a_non_string_kid_is_refused(tokens, ed_private, kid):
    refused(tokens.verify_access, ed_token(ed_private, {**ED_HEADER, "kid": kid}), "kid missing")


def test_an_unknown_kid_is_refused_and_reported_for_a_key_reload(tokens, ed_private, unknown_kids):
    refused(tokens.verify_access, ed_token(ed_private, {**ED_HEADER, "kid": "k9"}), "unknown kid")
    assert unknown_kids == ["k9"]


@pytest.mark.parametrize(
    "kid",
    [
        "../../x",
        "../../../../dev/null",
        "' OR '1'='1",
        "ed'; DROP TABLE signing_keys; --",
        "ed\x00",
        "ed ",
        "",
        "a" * 65,
        "k" * 5000,
        "édé",
        "/etc/passwd",
        "ed|whoami",
    ],
)
def test_an_injected_kid_is_refused_as_malformed_without_a_key_lookup(
    tokens, ed_private, unknown_kids, kid
):
    refused(tokens.verify_access, ed_token(ed_private, {**ED_HEADER, "kid": kid}), "kid malformed")
    assert unknown_kids == []


# Headers that point the verifier at attacker-controlled keys.


def test_an_embedded_jwk_whose_key_actually_signed_the_token_is_refused(tokens):
    attacker = ed25519.Ed25519PrivateKey.generate()
    raw = attacker.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    header = {**ED_HEADER, "jwk": {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}}
    token = forge(header, access_payload(NOW), ed25519_signer(attacker))
    refused(tokens.verify_access, token, "'jwk' refused")


def test_a_jku_pointing_to_an_attacker_url_is_refused_even_when_our_key_signed(tokens, ed_private):
    header = {**ED_HEADER, "jku": "https://attacker.example/jwks.json"}
    refused(tokens.verify_access, ed_token(ed_private, header), "'jku' refused")


def test_an_x5u_header_is_refused(tokens, ed_private):
    header = {**ED_HEADER, "x5u": "https://attacker.example/cert.pem"}
    refused(tokens.verify_access, ed_token(ed_private, header), "'x5u' refused")


def test_an_x5c_header_is_refused(tokens, ed_private):
    header = {**ED_HEADER, "x5c": [base64.b64encode(b"not a real certificate").decode()]}
    refused(tokens.verify_access, ed_token(ed_private, header), "'x5c' refused")


def test_a_crit_header_is_refused(tokens, ed_private):
    header = {**ED_HEADER, "crit": ["exp"]}
    refused(tokens.verify_access, ed_token(ed_private, header), "'crit' refused")


def test_any_other_header_member_is_refused(tokens, ed_private):
    header = {**ED_HEADER, "x5t": "abc", "cty": "JWT"}
    refused(tokens.verify_access, ed_token(ed_private, header), "header members")


def test_a_header_with_a_duplicated_member_is_refused(tokens, ed_private):
    token = ed_token(ed_private)
    _, payload, signature = token.split(".")
    doubled = b'{"alg":"EdDSA","kid":"ed","typ":"at+jwt","alg":"none"}'
    refused(tokens.verify_access, f"{b64(doubled)}.{payload}.{signature}", "header is not")


# typ: no token kind stands in for another.


def test_an_actor_token_presented_as_an_access_token_is_refused(tokens):
    actor = tokens.issue_actor(subject="user-1", scopes=["knowledge:read"])
    refused(tokens.verify_access, actor, "is not at+jwt")


def test_an_access_token_presented_as_an_actor_token_is_refused(tokens):
    issued = tokens.issue_access(
        subject="user-1", session_id="s", roles=["user"], scopes=["a:b"], amr=["pwd"]
    )
    refused(tokens.verify_actor, issued.token, "is not actor+jwt")


def test_an_mfa_token_presented_as_an_access_token_is_refused(tokens):
    refused(tokens.verify_access, tokens.issue_mfa(subject="user-1"), "is not at+jwt")


def test_an_access_token_presented_as_an_mfa_token_is_refused(tokens):
    issued = tokens.issue_access(subject="u", session_id="s", roles=[], scopes=[], amr=["pwd"])
    refused(tokens.verify_mfa, issued.token, "is not mfa+jwt")


def test_an_mfa_token_presented_as_an_actor_token_is_refused(tokens):
    refused(tokens.verify_actor, tokens.issue_mfa(subject="user-1"), "is not actor+jwt")


def test_an_actor_token_relabelled_as_access_fails_its_signature(tokens):
    actor = tokens.issue_actor(subject="user-1", scopes=["admin"], session_id="s")
    _, payload, signature = actor.split(".")
    relabelled = f"{part({**ED_HEADER})}.{payload}.{signature}"
    refused(tokens.verify_access, relabelled, "bad signature")


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "refresh+jwt", "at+jwt2", 1])
def test_a_missing_or_other_typ_is_refused(tokens, ed_private, typ):
    header = {"alg": "EdDSA", "kid": "ed"} if typ is None else {**ED_HEADER, "typ": typ}
    refused(tokens.verify_access, ed_token(ed_private, header), "is not at+jwt")


def test_an_opaque_refresh_token_presented_as_an_access_token_is_refused(tokens):
    from security.refresh import new_refresh_token

    refused(tokens.verify_access, new_refresh_token(), "three parts")


# Signature and payload.


def test_a_tampered_payload_is_refused(tokens, ed_private):
    header, _, signature = ed_token(ed_private).split(".")
    escalated = part(access_payload(NOW, roles=["admin"], sub="user-2"))
    refused(tokens.verify_access, f"{header}.{escalated}.{signature}", "bad signature")


def test_a_token_signed_by_another_ed25519_key_under_our_kid_is_refused(tokens):
    token = ed_token(ed25519.Ed25519PrivateKey.generate())
    refused(tokens.verify_access, token, "bad signature")


def test_a_truncated_signature_is_refused(tokens, ed_private):
    token = ed_token(ed_private)
    with pytest.raises(TokenError):
        tokens.verify_access(token[:-8])


def test_a_payload_that_is_not_a_json_object_is_refused(tokens, ed_private):
    header = part(ED_HEADER)
    body = b64(b"[1,2,3]")
    signature = b64(ed_private.sign(f"{header}.{body}".encode()))
    refused(tokens.verify_access, f"{header}.{body}.{signature}", "malformed token")


# Times (leeway 30 s).


def test_an_expired_token_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, exp=NOW - 31), "expired")


def test_a_token_expired_within_the_leeway_is_still_accepted(tokens, ed_private):
    assert tokens.verify_access(ed_token(ed_private, exp=NOW - 29)).subject == "user-1"


def test_a_token_with_nbf_in_the_future_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, nbf=NOW + 120), "nbf")


def test_a_token_with_iat_in_the_future_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, iat=NOW + 120), "iat")


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [str(NOW + 900), float(NOW + 900), True, None])
def test_time_claims_that_are_not_integers_are_refused(tokens, ed_private, claim, value):
    with pytest.raises(TokenError):
        tokens.verify_access(ed_token(ed_private, **{claim: value}))


def test_a_token_expired_during_its_cached_life_is_refused(tokens, ed_private, clock):
    token = ed_token(ed_private, exp=NOW + 60)
    tokens.verify_access(token)
    clock.now = NOW + 91
    refused(tokens.verify_access, token, "expired")


# Issuer and audience.


def test_a_wrong_issuer_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, iss="https://evil.example"), "wrong issuer")


def test_a_missing_issuer_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, iss=...), "missing claim iss")


def test_a_wrong_audience_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, aud="another-api"), "wrong audience")


def test_a_missing_audience_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, aud=...), "missing claim aud")


def test_an_audience_list_not_containing_ours_is_refused(tokens, ed_private):
    token = ed_token(ed_private, aud=["another-api", "third-api"])
    refused(tokens.verify_access, token, "wrong audience")


def test_an_audience_list_even_with_ours_is_refused_as_we_only_issue_one(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, aud=["uait-api", "x"]), "wrong audience")


def test_an_access_token_for_the_workers_audience_is_refused(tokens, ed_private):
    refused(tokens.verify_access, ed_token(ed_private, aud="uait-workers"), "wrong audience")


# Required claims and their types.


@pytest.mark.parametrize(
    "claim", ["sub", "jti", "sid", "exp", "iat", "nbf", "roles", "scope", "amr"]
)
def test_a_missing_required_claim_is_refused(tokens, ed_private, claim):
    refused(tokens.verify_access, ed_token(ed_private, **{claim: ...}), f"missing claim {claim}")


@pytest.mark.parametrize(
    ("claim", "value"),
    [("sub", ""), ("sub", 7), ("sid", 7), ("roles", "admin"), ("roles", [1]), ("scope", ["a"])],
)
def test_a_claim_of_the_wrong_type_is_refused(tokens, ed_private, claim, value):
    with pytest.raises(TokenError):
        tokens.verify_access(ed_token(ed_private, **{claim: value}))


# Size, shape and keys.


def test_a_token_longer_than_8_kib_is_refused_before_any_parsing(tokens, ed_private):
    token = ed_token(ed_private, roles=["r" * 50] * 200)
    assert len(token) > 8192
    refused(tokens.verify_access, token, "longer than 8 KiB")


@pytest.mark.parametrize(
    "token", ["", "a.b", "a.b.c.d", "a.b.c.d.e", "...", "not-a-token", "é.é.é", "%%%.a.b"]
)
def test_strings_that_are_not_compact_jws_are_refused(tokens, token):
    with pytest.raises(TokenError):
        tokens.verify_access(token)


@pytest.mark.parametrize("suffix", ["\n", "=", "==", " ", "%20"])
def test_a_valid_token_with_characters_outside_base64url_is_refused(tokens, ed_private, suffix):
    token = ed_token(ed_private)
    assert tokens.verify_access(token).subject == "user-1"
    refused(tokens.verify_access, token + suffix, "not unpadded base64url")


def test_a_header_that_is_not_an_object_is_refused(tokens, ed_private):
    _, payload, signature = ed_token(ed_private).split(".")
    refused(
        tokens.verify_access,
        f"{b64(json.dumps(['x']).encode())}.{payload}.{signature}",
        "not a JSON object",
    )


def test_a_token_signed_by_a_retired_and_expired_key_is_refused(tokens, old_private):
    # The claims are fresh: only the key's retirement (2 h ago, > TTL) refuses it.
    token = forge({**ED_HEADER, "kid": "old"}, access_payload(NOW), ed25519_signer(old_private))
    refused(tokens.verify_access, token, "unknown kid")


def test_a_token_of_a_retired_key_stops_verifying_once_the_key_is_past_its_horizon(
    tokens, rsa_private, clock
):
    token = forge(RSA_HEADER, access_payload(NOW, exp=NOW + 10_000), rsa_signer(rsa_private))
    assert tokens.verify_access(token).subject == "user-1"
    clock.now = NOW - 60 + 930  # the key was retired at NOW - 60, tokens live at most 930 s
    refused(tokens.verify_access, token, "unknown kid")


def test_nothing_private_appears_in_the_published_jwks(key_set):
    published = key_set.jwks()["keys"]
    assert {k["kid"] for k in published} == {"ed", "rsa"}
    for jwk in published:
        assert set(jwk) <= {"kty", "crv", "x", "n", "e", "kid", "alg", "use"}
        assert not set(jwk) & {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
        assert jwk["use"] == "sig"
