"""JWT issue and verification: access (``at+jwt``, RFC 9068), actor and pre-2FA (mfa) tokens.

The kinds are told apart by the JOSE header ``typ`` and cannot stand in for one another. A
token is checked before any signature work: size, header members (only ``alg``, ``kid``,
``typ``; ``jku``/``x5u``/``x5c``/``jwk``/``crit`` refused by name), a well-formed known ``kid``
whose server-side pinned algorithm must equal the header's ``alg``. Then pyjwt verifies the
signature, ``iss`` and ``aud`` (a string equal to ours), and the times are checked here against
the injected clock. Refusals raise :class:`TokenError`; its reason is for logs only.

Verified tokens are kept in a bounded LRU keyed by the token's SHA-256 and answered from it only
before the token's ``exp`` and while its key still verifies. Revocation (a logged-out session,
a disabled user) is not known here: the caller checks it on every request, cached or not.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import TYPE_CHECKING, Any

import jwt

from security.jose import (
    MAX_TOKEN_BYTES,
    Claims,
    IssuedToken,
    Kind,
    TokenConfig,
    TokenError,
    VerifiedCache,
    check_header,
    claims_from_payload,
    kinds,
    parse_header,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from security.keyset import KeySet

__all__ = ["Claims", "IssuedToken", "TokenConfig", "TokenError", "Tokens"]


class Tokens:
    """Issues and verifies the platform's JWTs with the keys of ``keys()``."""

    def __init__(
        self,
        keys: Callable[[], KeySet],
        config: TokenConfig,
        *,
        on_unknown_kid: Callable[[str], object] | None = None,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self.config = config
        self._on_unknown_kid = on_unknown_kid
        self._clock = clock
        self._cache = VerifiedCache(cache_size)
        self._kinds = kinds(config)
        self._jwt = jwt.PyJWT()

    def issue_access(
        self,
        *,
        subject: str,
        session_id: str,
        roles: Sequence[str],
        scopes: Sequence[str],
        amr: Sequence[str],
    ) -> IssuedToken:
        extra = {"sid": session_id, "roles": list(roles), "scope": _scope_claim(scopes)}
        return self._issue(self._kinds["access"], subject, {**extra, "amr": list(amr)})

    def issue_actor(
        self,
        *,
        subject: str,
        scopes: Sequence[str],
        session_id: str | None = None,
        roles: Sequence[str] = (),
    ) -> str:
        extra: dict[str, Any] = {"scope": _scope_claim(scopes), "roles": list(roles)}
        if session_id is not None:
            extra["sid"] = session_id
        return self._issue(self._kinds["actor"], subject, extra).token

    def issue_mfa(self, *, subject: str, amr: Sequence[str] = ("pwd",)) -> str:
        return self._issue(self._kinds["mfa"], subject, {"amr": list(amr)}).token

    def verify_access(self, token: str) -> Claims:
        return self._verify(token, self._kinds["access"])

    def verify_actor(self, token: str) -> Claims:
        return self._verify(token, self._kinds["actor"])

    def verify_mfa(self, token: str) -> Claims:
        return self._verify(token, self._kinds["mfa"])

    def _issue(self, kind: Kind, subject: str, extra: dict[str, Any]) -> IssuedToken:
        if not subject:
            raise ValueError("a token needs a subject")
        instant = self._clock()
        signer = self._keys().signing_key_at(instant)
        now = int(instant)
        payload = {
            "iss": self.config.issuer,
            "aud": kind.audience,
            "sub": subject,
            "jti": secrets.token_urlsafe(16),
            "iat": now,
            "nbf": now,
            "exp": now + kind.ttl_s,
            **extra,
        }
        token = self._jwt.encode(
            payload,
            signer.private_key,
            algorithm=signer.alg,
            headers={"kid": signer.kid, "typ": kind.typ},
        )
        claims = claims_from_payload(payload, kind)
        return IssuedToken(token=token, claims=claims, expires_at=claims.expires_at)

    def _verify(self, token: str, kind: Kind) -> Claims:
        if not isinstance(token, str) or not token.isascii():
            raise TokenError("token is not an ASCII string")
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("token longer than 8 KiB")
        now = self._clock()
        keys = self._keys()
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._cache.get(digest, kind=kind.name, now=now)
        if cached is not None and keys.public_key(cached[1], at=now) is not None:
            return cached[0]
        header = parse_header(token)
        kid = check_header(header, kind)
        key = keys.public_key(kid, at=now)
        if key is None:
            if self._on_unknown_kid is not None:
                self._on_unknown_kid(kid)
            raise TokenError("unknown kid")
        if header["alg"] != key.alg:
            raise TokenError(f"alg {header['alg']!r} is not the pinned {key.alg} of this kid")
        try:
            payload = self._jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                audience=kind.audience,
                issuer=self.config.issuer,
                options={
                    "verify_exp": False,  # times are checked below against the injected clock
                    "verify_nbf": False,
                    "verify_iat": False,
                    "strict_aud": True,
                    "require": ["iss", "aud", "sub", "jti", "iat", "nbf", "exp"],
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise TokenError(f"missing claim {exc.claim}") from None
        except jwt.InvalidAudienceError:
            raise TokenError("wrong audience") from None
        except jwt.InvalidIssuerError:
            raise TokenError("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise TokenError("bad signature") from None
        except jwt.PyJWTError as exc:
            raise TokenError(f"malformed token: {exc}") from None
        claims = claims_from_payload(payload, kind, now=now, leeway_s=self.config.leeway_s)
        self._cache.put(digest, claims, kid)
        return claims


def _scope_claim(scopes: Sequence[str]) -> str:
    """RFC 9068's space-separated ``scope``: a scope holding a space would become two."""
    if any(not scope or any(char.isspace() for char in scope) for scope in scopes):
        raise ValueError(f"scopes must be non-empty and without spaces: {list(scopes)!r}")
    return " ".join(scopes)
