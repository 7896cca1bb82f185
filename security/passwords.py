"""Password policy and argon2id hashing.

Policy follows NIST SP 800-63B: 8-128 characters of any Unicode (counted in code points after NFC
normalisation), no composition rules, common and identity-derived passwords refused. Hashing
uses argon2id with OWASP's parameters by default. Hashing and verification both normalise to
NFC, so the same password typed on two keyboards that compose differently still matches.
"""

from __future__ import annotations

import contextlib
import functools
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Literal

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

if TYPE_CHECKING:
    from collections.abc import Iterable

MIN_LENGTH = 8
MAX_LENGTH = 128
MIN_IDENTITY_LENGTH = 4

PolicyCode = Literal["too_short", "too_long", "common", "contains_identity", "invalid"]


class PasswordPolicyError(ValueError):
    """Raised when a new password breaks the policy; ``code`` says which rule."""

    def __init__(self, code: PolicyCode, message: str) -> None:
        super().__init__(message)
        self.code: PolicyCode = code


@dataclass(frozen=True)
class Argon2Params:
    """argon2id cost; the defaults are OWASP's (m=19 MiB, t=2, p=1)."""

    memory_kib: int = 19456
    time_cost: int = 2
    parallelism: int = 1


@dataclass(frozen=True)
class PasswordCheck:
    ok: bool
    needs_rehash: bool


def check_password_policy(password: str, *, identity: Iterable[str] = ()) -> str:
    """The NFC-normalised password, or :class:`PasswordPolicyError`.

    ``identity`` holds strings the password must neither equal nor contain (the email, its local
    part, the display name); only those of at least 4 characters count.
    """
    if len(password) > MAX_LENGTH * 8:  # bound the normalisation work on hostile input
        raise PasswordPolicyError("too_long", f"a password has at most {MAX_LENGTH} characters")
    normalised = unicodedata.normalize("NFC", password)
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in normalised):
        raise PasswordPolicyError("invalid", "a password cannot contain control characters")
    if len(normalised) < MIN_LENGTH:
        raise PasswordPolicyError("too_short", f"a password has at least {MIN_LENGTH} characters")
    if len(normalised) > MAX_LENGTH:
        raise PasswordPolicyError("too_long", f"a password has at most {MAX_LENGTH} characters")
    lowered = normalised.lower()
    if lowered in common_passwords():
        raise PasswordPolicyError("common", "this password is too common")
    for value in _identity_forms(identity):
        if value in lowered:
            raise PasswordPolicyError(
                "contains_identity", "a password cannot contain your email or name"
            )
    return normalised


@functools.cache
def common_passwords() -> frozenset[str]:
    text = resources.files("security").joinpath("data/common-passwords.txt").read_text("utf-8")
    return frozenset(line for line in text.splitlines() if line)


def _identity_forms(identity: Iterable[str]) -> set[str]:
    forms = set()
    for raw in identity:
        value = unicodedata.normalize("NFC", raw).strip().lower()
        local, at, _ = value.partition("@")
        for form in (value, local if at else ""):
            if len(form) >= MIN_IDENTITY_LENGTH:
                forms.add(form)
    return forms


class Passwords:
    """argon2id hashing with a constant-work answer for unknown users and malformed hashes."""

    def __init__(self, params: Argon2Params) -> None:
        self.params = params
        self._hasher = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        # Verified against when there is no stored hash, so "no such user" costs the same work.
        self._dummy = self._hasher.hash("uait-dummy-password-for-unknown-users")

    def hash(self, password: str) -> str:
        return self._hasher.hash(unicodedata.normalize("NFC", password))

    def verify(self, stored_hash: str | None, password: str) -> PasswordCheck:
        candidate = unicodedata.normalize("NFC", password)
        if stored_hash is not None:
            try:
                self._hasher.verify(stored_hash, candidate)
            except VerifyMismatchError:
                return PasswordCheck(ok=False, needs_rehash=False)
            except (InvalidHashError, VerificationError):
                pass  # a malformed hash fails before any work: do the dummy work and refuse
            else:
                return PasswordCheck(ok=True, needs_rehash=self._needs_rehash(stored_hash))
        with contextlib.suppress(VerificationError):
            self._hasher.verify(self._dummy, candidate)
        return PasswordCheck(ok=False, needs_rehash=False)

    def _needs_rehash(self, stored_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True
