"""Erasure destroys a user's personal data for good, and logins rehash outdated passwords."""

from __future__ import annotations

import subprocess

import psycopg
import pytest

from security.fields import unseal
from tests.e2e.fixtures import CLI, REPO_ROOT, IngressStarter, Services
from tests.security.test_auth_http import User, eventually, status

pytestmark = pytest.mark.e2e


def test_an_erased_user_stays_erased_after_a_rebuild_and_their_events_cannot_be_read(
    services: Services, api
):
    u = User(services.base_url)
    u.register()
    u.login()
    user_id = u.user_id
    url = services.env["UAIT_DATABASE_URL"]
    with psycopg.connect(url) as conn:
        [sealed] = conn.execute(
            "SELECT email_sealed FROM users WHERE user_id = %s", (user_id,)
        ).fetchone()
        assert sealed.startswith("v1.")
    erased = api.delete(f"/v1/users/{user_id}", headers={"Prefer": "wait=20"})
    assert erased.status_code == 200, erased.text
    assert status(services.base_url, "GET", "/v1/me", headers=u.bearer) == 401

    def gone() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT status, email_sealed, name_sealed FROM users WHERE user_id = %s",
                (user_id,),
            ).fetchone()
            keys = conn.execute(
                "SELECT count(*) FROM user_data_keys WHERE user_id = %s", (user_id,)
            ).fetchone()
        return row == ("erased", None, None) and keys == (0,)

    assert eventually(gone)
    rebuilt = subprocess.run(
        [*CLI, "projections", "rebuild", "identity.users"],
        env=services.env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert gone()
    # The events are still there (append-only), but what they seal is unreadable: the key is
    # gone, and no other key opens it.
    with psycopg.connect(url) as conn:
        states = [
            bytes(r[0])
            for r in conn.execute(
                "SELECT state FROM identity_events WHERE topic = 'UserRegistered'"
                " AND originator_id = %s",
                (user_id,),
            )
        ]
        other_keys = conn.execute("SELECT count(*) FROM user_data_keys").fetchone()
    assert len(states) == 1
    assert u.email.encode() not in states[0]
    assert other_keys is not None
    with pytest.raises(ValueError):
        unseal(b"\0" * 32, sealed, aad=f"{user_id}:email")
    # The email can be registered again, by someone new.
    again = User(services.base_url)
    again.email = u.email
    again.register()
    assert again.login()
    assert again.user_id != user_id


def test_a_login_rehashes_a_password_made_with_outdated_parameters(
    services: Services, start_ingress: IngressStarter
):
    old = start_ingress(UAIT_ARGON2_MEMORY_KIB="8192", UAIT_ARGON2_TIME_COST="1").base_url
    new = start_ingress(UAIT_ARGON2_MEMORY_KIB="9216", UAIT_ARGON2_TIME_COST="2").base_url
    u = User(old)
    u.register()
    u.login(old)
    user_id = u.user_id
    url = services.env["UAIT_DATABASE_URL"]

    def stored() -> str:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT password_hash FROM password_credentials WHERE user_id = %s", (user_id,)
            ).fetchone()
        assert row is not None
        return str(row[0])

    assert "m=8192,t=1" in stored()
    u.login(new)
    assert "m=9216,t=2" in stored()
    assert u.login(old)  # the new hash still verifies everywhere
