"""Signing keys in PostgreSQL (table ``signing_keys``, migration 0004), encrypted by the keyring.

Rotation publishes a new key at once and lets it sign only after ``activate_after_s``: every
replica reloads its key set within that delay, so none meets a token signed by a key it has
never seen. The previous key is retired at the new key's activation and keeps verifying until
its last tokens have expired.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg.types.json import Jsonb

from security.keyset import (
    KeySet,
    SigningKey,
    VerificationKey,
    check_alg,
    generate_private_key,
    private_from_pkcs8,
    private_to_pkcs8,
    public_from_jwk,
    public_jwk,
)

if TYPE_CHECKING:
    import psycopg

    from security.keyring import Keyring

_LOCK_KEY = 0x7561_6B73  # "uaks": serialises key creation and rotation across processes
_SELECT = (
    "SELECT kid, alg, public_jwk, private_key, activates_at, retired_at FROM signing_keys"
    " WHERE retired_at IS NULL OR retired_at > %s ORDER BY activates_at, kid"
)
_INSERT = (
    "INSERT INTO signing_keys (kid, alg, public_jwk, private_key, created_at, activates_at)"
    " VALUES (%s, %s, %s, %s, %s, %s)"
)
# Any key not retired counts, a pending one too: the first key exists once, whatever each
# process's clock says about its activation instant.
_USABLE = (
    "SELECT kid FROM signing_keys WHERE retired_at IS NULL OR retired_at > %s"
    " ORDER BY activates_at <= %s DESC, activates_at DESC LIMIT 1"
)


def ensure_key(
    conn: psycopg.Connection[Any],
    keyring: Keyring,
    *,
    alg: str = "EdDSA",
    now: datetime | None = None,
) -> str:
    """The usable key's kid, creating an immediately active key when there is none.

    Under an advisory lock, so processes starting together create one key between them.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        now = now or datetime.now(UTC)  # read under the lock: later than any key made before
        row = conn.execute(_USABLE, (now, now)).fetchone()
        if row is not None:
            return str(row[0])
        return _insert(conn, keyring, alg=alg, created_at=now, activates_at=now)


def rotate(
    conn: psycopg.Connection[Any],
    keyring: Keyring,
    *,
    alg: str = "EdDSA",
    activate_after_s: float,
    now: datetime | None = None,
) -> str:
    """Add a key published now and signing after ``activate_after_s``; returns its kid."""
    if activate_after_s < 0:
        raise ValueError("activate_after_s cannot be negative")
    now = now or datetime.now(UTC)
    activates_at = now + timedelta(seconds=activate_after_s)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        kid = _insert(conn, keyring, alg=alg, created_at=now, activates_at=activates_at)
        conn.execute(
            "UPDATE signing_keys SET retired_at = %s"
            " WHERE kid <> %s AND (retired_at IS NULL OR retired_at > %s)",
            (activates_at, kid, activates_at),
        )
    return kid


def load_key_set(
    conn: psycopg.Connection[Any],
    keyring: Keyring,
    *,
    max_token_ttl_s: float,
    now: datetime | None = None,
) -> KeySet:
    now = now or datetime.now(UTC)
    rows = conn.execute(_SELECT, (_horizon(now, max_token_ttl_s),)).fetchall()
    return key_set_from_rows(rows, keyring, max_token_ttl_s=max_token_ttl_s, now=now)


async def aload_key_set(
    conn: psycopg.AsyncConnection[Any],
    keyring: Keyring,
    *,
    max_token_ttl_s: float,
    now: datetime | None = None,
) -> KeySet:
    now = now or datetime.now(UTC)
    cursor = await conn.execute(_SELECT, (_horizon(now, max_token_ttl_s),))
    rows = await cursor.fetchall()
    return key_set_from_rows(rows, keyring, max_token_ttl_s=max_token_ttl_s, now=now)


def key_set_from_rows(
    rows: list[tuple[Any, ...]], keyring: Keyring, *, max_token_ttl_s: float, now: datetime
) -> KeySet:
    """Private keys are decrypted only for keys that sign now or will (current and pending)."""
    keys = []
    for kid, alg, jwk, private_blob, activates_at, retired_at in rows:
        check_alg(alg)
        retired = retired_at.timestamp() if retired_at is not None else None
        signer = None
        if retired_at is None or retired_at > now:
            der = keyring.decrypt(bytes(private_blob), aad=kid.encode())
            signer = SigningKey(kid=kid, alg=alg, private_key=private_from_pkcs8(der, alg))
        keys.append(
            VerificationKey(
                kid=kid,
                alg=alg,
                key=public_from_jwk(jwk, alg),
                activates_at=activates_at.timestamp(),
                retired_at=retired,
                signer=signer,
            )
        )
    return KeySet(keys, max_token_ttl_s=max_token_ttl_s, loaded_at=now.timestamp())


def rewrap_signing_keys(conn: psycopg.Connection[Any], keyring: Keyring) -> int:
    """Re-encrypt every stored private key under the current KEK; returns how many changed.

    Run after putting a new KEK first in the keyring setting; afterwards the old KEK can leave it.
    """
    changed = 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        rows = conn.execute("SELECT kid, private_key FROM signing_keys FOR UPDATE").fetchall()
        for kid, blob in rows:
            if keyring.kid_of(bytes(blob)) == keyring.current_kid:
                continue
            new_blob = keyring.rewrap(bytes(blob), aad=kid.encode())
            conn.execute("UPDATE signing_keys SET private_key = %s WHERE kid = %s", (new_blob, kid))
            changed += 1
    return changed


def new_kid() -> str:
    return secrets.token_urlsafe(12)


def _insert(
    conn: psycopg.Connection[Any],
    keyring: Keyring,
    *,
    alg: str,
    created_at: datetime,
    activates_at: datetime,
) -> str:
    kid = new_kid()
    private = generate_private_key(check_alg(alg))
    jwk = public_jwk(private.public_key(), kid=kid, alg=alg)
    blob = keyring.encrypt(private_to_pkcs8(private), aad=kid.encode())
    conn.execute(_INSERT, (kid, alg, Jsonb(jwk), blob, created_at, activates_at))
    return kid


def _horizon(now: datetime, max_token_ttl_s: float) -> datetime:
    return now - timedelta(seconds=max_token_ttl_s)
