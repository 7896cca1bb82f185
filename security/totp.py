"""TOTP (RFC 6238, on pyotp) with replay blocking, and single-use recovery codes.

:func:`match_totp` returns the time step a code matched, not a bool: the caller stores the last
used step with a compare-and-set and refuses any code of an earlier or equal step
(:func:`is_replay`), so a code works once even within its window. Recovery codes are stored
only as SHA-256 hashes (60 random bits each, offline guessing is out of reach at the rate the
login throttle allows online) and each is consumed once with ``DELETE ... RETURNING``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

import pyotp

INTERVAL_S = 30
DIGITS = 6
_CODE = re.compile(r"[0-9]{6}")
# Crockford's base32: no i, l, o, u, so codes read aloud or typed by hand are unambiguous.
_RECOVERY_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RECOVERY_FIXES = str.maketrans({"o": "0", "i": "1", "l": "1", "-": None, " ": None})


def new_totp_secret() -> str:
    """A base32 secret of 160 bits, as RFC 4226 recommends."""
    return pyotp.random_base32(length=32)


def provisioning_uri(secret: str, *, account: str, issuer: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account, issuer_name=issuer)


def match_totp(secret: str, code: str, *, at: float, valid_window: int = 1) -> int | None:
    """The time step ``code`` matches within ``valid_window`` steps of ``at``, else None.

    Every candidate step is compared in constant time, and all of them are tried whatever
    matches first, so timing tells nothing about which step matched.
    """
    if not isinstance(code, str) or _CODE.fullmatch(code) is None:
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL_S)
    current = int(at // INTERVAL_S)
    matched = None
    for step in range(current - valid_window, current + valid_window + 1):
        if step >= 0 and hmac.compare_digest(totp.generate_otp(step), code):
            matched = step
    return matched


def is_replay(step: int, last_used_step: int | None) -> bool:
    """Whether a matched step must be refused because an equal or later step was used."""
    return last_used_step is not None and step <= last_used_step


def new_recovery_codes(n: int = 10) -> list[str]:
    """``n`` codes like ``7k2m-9xq4-hw3d``: 12 Crockford base32 characters, 60 bits each."""
    codes = []
    for _ in range(n):
        raw = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(12))
        codes.append(f"{raw[:4]}-{raw[4:8]}-{raw[8:]}")
    return codes


def normalise_recovery_code(code: str) -> str:
    """Lower case, no dashes or spaces, and the letters Crockford reads as digits mapped."""
    return code.strip().lower().translate(_RECOVERY_FIXES)


def hash_recovery_code(code: str) -> bytes:
    return hashlib.sha256(normalise_recovery_code(code).encode("utf-8")).digest()
