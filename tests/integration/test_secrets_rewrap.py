"""Rotating the key-encryption key: `uait secrets rewrap` moves every wrapped blob to the new
key, after which the old key can leave the setting."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psycopg
import pytest
from typer.testing import CliRunner

from infra.migrate import migrate
from infra.stack import create_database, drop_database
from security.keyring import DecryptionError, Keyring
from security.keystore import ensure_key, load_key_set
from uait.main import app as cli

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration


@pytest.fixture
def database_url(endpoints: Endpoints) -> Iterator[str]:
    name = f"uait_rewrap_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    yield url
    drop_database(endpoints.database_url, name)


def test_rewrap_moves_every_blob_to_the_new_key_and_the_old_one_can_go(database_url: str):
    old_setting = Keyring.generate_setting("old")
    new_setting = Keyring.generate_setting("new")
    old = Keyring.from_setting(old_setting)
    user_id = str(uuid.uuid4())
    with psycopg.connect(database_url) as conn:
        ensure_key(conn, old)
        conn.execute(
            "INSERT INTO user_data_keys (user_id, wrapped_key) VALUES (%s, %s)",
            (user_id, old.encrypt(b"k" * 32, aad=user_id.encode())),
        )
        conn.execute(
            "INSERT INTO totp_credentials (user_id, secret_sealed) VALUES (%s, %s)",
            (user_id, old.encrypt(b"JBSWY3DPEHPK3PXP", aad=f"totp:{user_id}".encode())),
        )
    both = f"{new_setting},{old_setting}"
    result = CliRunner().invoke(
        cli,
        ["secrets", "rewrap"],
        env={"UAIT_DATABASE_URL": database_url, "UAIT_KEY_ENCRYPTION_KEYS": both},
    )
    assert result.exit_code == 0, result.output
    assert "user_data_keys: 1 re-encrypted" in result.output
    assert "signing_keys: 1 re-encrypted" in result.output
    new_only = Keyring.from_setting(new_setting)
    with psycopg.connect(database_url) as conn:
        [key] = conn.execute("SELECT wrapped_key FROM user_data_keys").fetchone() or [b""]
        [secret] = conn.execute("SELECT secret_sealed FROM totp_credentials").fetchone() or [b""]
        assert new_only.decrypt(bytes(key), aad=user_id.encode()) == b"k" * 32
        assert new_only.decrypt(bytes(secret), aad=f"totp:{user_id}".encode()) == (
            b"JBSWY3DPEHPK3PXP"
        )
        assert load_key_set(conn, new_only, max_token_ttl_s=600).signing_key is not None
        with pytest.raises(DecryptionError):
            old.decrypt(bytes(key), aad=user_id.encode())
    # A second run finds nothing left to move.
    again = CliRunner().invoke(
        cli,
        ["secrets", "rewrap"],
        env={"UAIT_DATABASE_URL": database_url, "UAIT_KEY_ENCRYPTION_KEYS": both},
    )
    assert "user_data_keys: 0 re-encrypted" in again.output
