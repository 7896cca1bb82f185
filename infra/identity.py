"""The identity pieces the ingress and the command line share: email hashing, sealing of personal
data, passwords.

Built once by the composition root from settings. Placeholder secrets fail loudly: the ingress
does not start without a key-encryption key and an identity pepper.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from security.fields import new_data_key, seal, unseal
from security.keyring import DecryptionError, Keyring
from security.passwords import Argon2Params, PasswordCheck, Passwords

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from infra.settings import Settings

ROLES_OF_USER = "ARRAY(SELECT role FROM user_roles r WHERE r.user_id = u.user_id)"
"""The roles of the ``users u`` row in a query, as an array."""

_EMAIL = re.compile(
    r"^[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,190}\.[^@\s\x00-\x1f\x7f.]{1,63}$"
)


class MissingSecretError(RuntimeError):
    """Raised at start-up when a secret setting of the identity context is empty or weak."""


def normalise_email(email: str) -> str:
    """NFC, trimmed, lower-cased: the form whose keyed hash identifies an account."""
    return unicodedata.normalize("NFC", email).strip().lower()


def valid_email(email: str) -> bool:
    return len(email) <= 254 and bool(_EMAIL.match(email))


def load_pepper(value: str) -> bytes:
    try:
        pepper = base64.b64decode(value, validate=True)
    except ValueError:
        raise MissingSecretError("UAIT_IDENTITY_PEPPER must be base64") from None
    if len(pepper) < 32:
        raise MissingSecretError("UAIT_IDENTITY_PEPPER must hold at least 32 bytes (base64)")
    return pepper


@dataclass
class IdentityCore:
    keyring: Keyring
    pepper: bytes
    passwords: Passwords
    pool: AsyncConnectionPool[Any]

    @classmethod
    def from_settings(cls, settings: Settings, pool: AsyncConnectionPool[Any]) -> IdentityCore:
        kek = settings.key_encryption_keys.get_secret_value()
        pepper = settings.identity_pepper.get_secret_value()
        if not kek or not pepper:
            raise MissingSecretError(
                "UAIT_KEY_ENCRYPTION_KEYS and UAIT_IDENTITY_PEPPER must be set "
                "(`uait secrets generate` prints fresh values; `uait dev` keeps its own)"
            )
        params = Argon2Params(
            memory_kib=settings.argon2_memory_kib,
            time_cost=settings.argon2_time_cost,
            parallelism=settings.argon2_parallelism,
        )
        return cls(Keyring.from_setting(kek), load_pepper(pepper), Passwords(params), pool)

    def email_hmac(self, email: str) -> str:
        return hmac.new(self.pepper, normalise_email(email).encode(), hashlib.sha256).hexdigest()

    async def hash_password(self, password: str) -> str:
        # argon2 holds the GIL-free C code for tens of ms: off the event loop.
        return await asyncio.to_thread(self.passwords.hash, password)

    async def check_password(self, stored: str | None, password: str) -> PasswordCheck:
        return await asyncio.to_thread(self.passwords.verify, stored, password)

    async def new_user_key(self, user_id: str) -> bytes:
        key = new_data_key()
        wrapped = self.keyring.encrypt(key, aad=user_id.encode())
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO user_data_keys (user_id, wrapped_key) VALUES (%s, %s)",
                (user_id, wrapped),
            )
        return key

    async def user_keys(self, user_ids: list[str]) -> dict[str, bytes]:
        """The data keys that still exist (an erased user's key is gone)."""
        if not user_ids:
            return {}
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT user_id, wrapped_key FROM user_data_keys WHERE user_id = ANY(%s::uuid[])",
                (user_ids,),
            )
            rows = await cur.fetchall()
        return {
            str(uid): self.keyring.decrypt(bytes(wrapped), aad=str(uid).encode())
            for uid, wrapped in rows
        }

    @staticmethod
    def seal_field(key: bytes, user_id: str, name: str, value: str) -> str:
        return seal(key, value, aad=f"{user_id}:{name}")

    @staticmethod
    def unseal_field(key: bytes | None, user_id: str, name: str, token: str | None) -> str | None:
        if key is None or token is None:
            return None
        try:
            return unseal(key, token, aad=f"{user_id}:{name}")
        except DecryptionError:
            return None

    async def unseal_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace ``email_sealed``/``name_sealed`` of user rows by their plain values (None for
        an erased user), with one key lookup for all of them."""
        keys = await self.user_keys([row["user_id"] for row in rows])
        for row in rows:
            key, uid = keys.get(row["user_id"]), row["user_id"]
            row["email"] = self.unseal_field(key, uid, "email", row.pop("email_sealed"))
            row["name"] = self.unseal_field(key, uid, "name", row.pop("name_sealed"))
        return rows

    def seal_secret(self, user_id: str, secret: str) -> bytes:
        return self.keyring.encrypt(secret.encode(), aad=f"totp:{user_id}".encode())

    def open_secret(self, user_id: str, blob: bytes) -> str:
        return self.keyring.decrypt(blob, aad=f"totp:{user_id}".encode()).decode()
