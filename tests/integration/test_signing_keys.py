"""Signing keys in the real PostgreSQL: first key once under concurrency, rotation, key caches."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from infra.migrate import migrate
from infra.stack import create_database, drop_database
from security.keyring import DecryptionError, Keyring
from security.signing import KeyCache, ensure_key, load_key_set, rewrap_signing_keys, rotate
from security.tokens import TokenConfig, TokenError, Tokens

if TYPE_CHECKING:
    from collections.abc import Iterator

    from infra.stack import Endpoints

pytestmark = pytest.mark.integration

CONFIG = TokenConfig(issuer="https://auth.uait.test", audience="uait-api")
TTL = CONFIG.max_token_ttl_s  # 930 s
# Now, not a fixed date: the async loader reads the keys as of the real clock.
T0 = datetime.now(UTC).replace(microsecond=0)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def database_url(endpoints: Endpoints) -> Iterator[str]:
    name = f"uait_keys_{uuid.uuid4().hex[:8]}"
    url = create_database(endpoints.database_url, name)
    migrate(url)
    yield url
    drop_database(endpoints.database_url, name)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("TRUNCATE signing_keys")
        yield connection


KEK_SETTING = Keyring.generate_setting("kek1")


@pytest.fixture(scope="module")
def keyring() -> Keyring:
    return Keyring.from_setting(KEK_SETTING)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_two_processes_starting_together_create_one_first_key(database_url, conn, keyring):
    barrier = threading.Barrier(4)
    kids: list[str] = []

    def start() -> None:
        with psycopg.connect(database_url, autocommit=True) as own:
            barrier.wait()
            kids.append(ensure_key(own, keyring))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(kids) == 4
    assert len(set(kids)) == 1
    assert conn.execute("SELECT count(*) FROM signing_keys").fetchone() == (1,)


def test_the_first_key_signs_at_once_and_ensure_key_keeps_it(conn, keyring):
    kid = ensure_key(conn, keyring, now=T0)
    assert ensure_key(conn, keyring, now=at(60)) == kid
    keys = load_key_set(conn, keyring, max_token_ttl_s=TTL, now=T0)
    assert keys.signing_key.kid == kid


def test_the_private_key_is_stored_encrypted_under_the_kek_with_the_kid_as_aad(conn, keyring):
    kid = ensure_key(conn, keyring, now=T0)
    blob, jwk = conn.execute(
        "SELECT private_key, public_jwk FROM signing_keys WHERE kid = %s", (kid,)
    ).fetchone()
    assert keyring.kid_of(bytes(blob)) == "kek1"
    assert b"-----BEGIN" not in bytes(blob)
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    other = Keyring.from_setting(Keyring.generate_setting("kek1"))
    with pytest.raises(DecryptionError):
        load_key_set(conn, other, max_token_ttl_s=TTL, now=T0)
    conn.execute("UPDATE signing_keys SET kid = 'moved' WHERE kid = %s", (kid,))
    with pytest.raises(DecryptionError):
        load_key_set(conn, keyring, max_token_ttl_s=TTL, now=T0)


def test_a_rotated_key_is_published_at_once_and_signs_only_after_activation(conn, keyring):
    old = ensure_key(conn, keyring, now=T0)
    new = rotate(conn, keyring, activate_after_s=60, now=at(10))
    before = load_key_set(conn, keyring, max_token_ttl_s=TTL, now=at(11))
    assert {k["kid"] for k in before.jwks()["keys"]} == {old, new}
    assert before.signing_key.kid == old
    clock = Clock(at(11))
    tokens = Tokens(lambda: before, CONFIG, clock=clock)
    assert tokens.verify_mfa(tokens.issue_mfa(subject="u")).subject == "u"
    import jwt

    assert jwt.get_unverified_header(tokens.issue_mfa(subject="u"))["kid"] == old
    clock.now = at(70).timestamp()  # the same snapshot switches at the activation instant
    assert jwt.get_unverified_header(tokens.issue_mfa(subject="u"))["kid"] == new
    after = load_key_set(conn, keyring, max_token_ttl_s=TTL, now=at(70))
    assert after.signing_key.kid == new
    retired = conn.execute("SELECT retired_at FROM signing_keys WHERE kid = %s", (old,)).fetchone()
    assert retired == (at(70),)


def test_a_token_of_the_old_key_verifies_until_it_expires_after_rotation_and_not_after(
    conn, keyring
):
    ensure_key(conn, keyring, now=T0)
    clock = Clock(at(50))
    issuing = Tokens(
        lambda: load_key_set(conn, keyring, max_token_ttl_s=TTL, now=at(50)), CONFIG, clock=clock
    )
    old_token = issuing.issue_access(subject="u", session_id="s", roles=[], scopes=[], amr=["pwd"])
    rotate(conn, keyring, activate_after_s=0, now=at(70))  # old key retired at T0 + 70 s

    def verifier(seconds: float) -> Tokens:
        return Tokens(
            lambda: load_key_set(conn, keyring, max_token_ttl_s=TTL, now=at(seconds)),
            CONFIG,
            clock=Clock(at(seconds)),
        )

    assert verifier(500).verify_access(old_token.token).subject == "u"
    assert verifier(50 + 900 + 29).verify_access(old_token.token).subject == "u"  # leeway
    with pytest.raises(TokenError, match="expired"):
        verifier(50 + 900 + 31).verify_access(old_token.token)
    late = load_key_set(conn, keyring, max_token_ttl_s=TTL, now=at(70 + TTL))
    assert {k["kid"] for k in late.jwks()["keys"]} == {late.signing_key.kid}
    with pytest.raises(TokenError, match="unknown kid"):
        verifier(70 + TTL).verify_access(old_token.token)


def test_a_second_process_key_cache_picks_up_a_rotated_key_after_refresh(
    database_url, conn, keyring
):
    ensure_key(conn, keyring)
    with psycopg.connect(database_url, autocommit=True) as other:
        replica = KeyCache(keyring, max_token_ttl_s=TTL)
        replica.refresh_sync(other)
        new = rotate(conn, keyring, activate_after_s=30)
        assert new not in replica.get().kids
        replica.refresh_sync(other)
        assert new in replica.get().kids
        assert replica.get().signing_key.kid != new  # published, not yet signing


async def test_an_async_key_cache_refreshes_from_a_pool_and_on_an_unknown_kid(
    database_url, conn, keyring
):
    ensure_key(conn, keyring)
    async with AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False) as pool:
        replica = KeyCache(keyring, max_token_ttl_s=TTL, refresh_period_s=600)
        runner = asyncio.create_task(replica.run(pool))
        try:
            for _ in range(100):
                if replica._keys is not None:
                    break
                await asyncio.sleep(0.02)
            first = replica.get()
            new = await asyncio.to_thread(rotate, conn, keyring, activate_after_s=0)
            issuer = KeyCache(keyring, max_token_ttl_s=TTL)
            issuer.refresh_sync(conn)
            token = Tokens(issuer.get, CONFIG).issue_mfa(subject="u")
            verifying = Tokens(replica.get, CONFIG, on_unknown_kid=replica.note_unknown_kid)
            with pytest.raises(TokenError, match="unknown kid"):
                verifying.verify_mfa(token)
            for _ in range(200):
                if new in replica.get().kids:
                    break
                await asyncio.sleep(0.01)
            assert replica.get() is not first
            assert verifying.verify_mfa(token).subject == "u"
        finally:
            runner.cancel()
            with pytest.raises(asyncio.CancelledError):
                await runner


async def test_the_async_loader_reads_the_same_set_as_the_sync_one(database_url, conn, keyring):
    ensure_key(conn, keyring, now=T0)
    rotate(conn, keyring, alg="RS256", activate_after_s=60, now=at(1))
    sync = load_key_set(conn, keyring, max_token_ttl_s=TTL, now=at(2))
    async with await psycopg.AsyncConnection.connect(database_url) as aconn:
        cache = KeyCache(keyring, max_token_ttl_s=TTL)
        await cache.refresh(aconn)
    assert sorted(cache.get().kids) == sorted(sync.kids)
    assert {k["alg"] for k in sync.jwks()["keys"]} == {"EdDSA", "RS256"}


def test_after_a_kek_rotation_rewrapped_keys_load_without_the_old_kek(conn, keyring):
    ensure_key(conn, keyring, now=T0)
    rotate(conn, keyring, activate_after_s=60, now=at(1))
    new_setting = Keyring.generate_setting("kek2")
    both = Keyring.from_setting(new_setting + "," + KEK_SETTING)
    assert rewrap_signing_keys(conn, both) == 2
    assert rewrap_signing_keys(conn, both) == 0
    only_new = Keyring.from_setting(new_setting)
    keys = load_key_set(conn, only_new, max_token_ttl_s=TTL, now=at(2))
    assert len(keys.kids) == 2
    with pytest.raises(DecryptionError):
        load_key_set(conn, keyring, max_token_ttl_s=TTL, now=at(2))
