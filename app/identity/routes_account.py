"""The caller's own account: profile, password, second factor and API keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row

from app.auth.authenticate import KEY_DENY
from app.auth.models import ApiKeyBody, CodeBody, PasswordChangeBody, ProfileBody, RotateKeyBody
from app.auth.principal import SELF, Principal, require, unauthorized
from app.auth.runtime import AuthRuntime, auth
from app.auth.second_factor import check_second_factor, consume_totp
from app.commanding import submit
from app.deps import Deps, deps
from app.identity.routes_login import _policy, set_password
from app.problems import V1_WRITE_PROBLEMS, ProblemError, problem_responses
from events.access import ADMIN
from events.identity.commands import (
    CreateApiKey,
    DisableTwoFactor,
    EnableTwoFactor,
    RevokeApiKey,
    UpdateUserProfile,
)
from infra.identity import ROLES_OF_USER
from security.apikeys import new_api_key
from security.totp import hash_recovery_code, new_recovery_codes, new_totp_secret, provisioning_uri

router = APIRouter(
    prefix="/v1", tags=["account"], responses=problem_responses(*V1_WRITE_PROBLEMS, 404)
)
Self = Annotated[Principal, Depends(require(SELF))]
Auth = Annotated[AuthRuntime, Depends(auth)]
D = Annotated[Deps, Depends(deps)]


async def profile(a: AuthRuntime, user_id: str) -> dict[str, Any] | None:
    async with a.core.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT user_id::text AS user_id, email_sealed, name_sealed, status, email_verified,"
            " two_factor, created_at, updated_at, " + ROLES_OF_USER + " AS roles"
            " FROM users u WHERE user_id = %s",
            (user_id,),
        )
        row = cast("dict[str, Any] | None", await cur.fetchone())
    if row is None:
        return None
    return (await a.core.unseal_rows([row]))[0]


@router.get("/me", responses=problem_responses(404))
async def me(who: Self, a: Auth) -> Any:
    row = await profile(a, who.user_id)
    if row is None:
        raise ProblemError(404, "User not found", "your account is not in the read model yet")
    return {**row, "permissions": sorted(who.permissions), "via": who.kind}


@router.patch("/me", status_code=202)
async def update_me(body: ProfileBody, request: Request, who: Self, a: Auth, d: D) -> JSONResponse:
    """Change your display name. Anything else (a role, say) is refused as an unknown field."""
    keys = await a.core.user_keys([who.user_id])
    if who.user_id not in keys:
        raise ProblemError(404, "User not found", "no such user")
    sealed = a.core.seal_field(keys[who.user_id], who.user_id, "name", body.name)
    command = UpdateUserProfile(user_id=who.user_id, name_sealed=sealed)
    return await submit(request, d, command, actor=who.actor, success_status=200)


@router.post("/me/password", status_code=204)
async def change_password(
    body: PasswordChangeBody, request: Request, who: Self, a: Auth, d: D
) -> Response:
    """Change your password (the current one is needed); every session ends."""
    if who.kind != "user":
        raise ProblemError(403, "Forbidden", "an API key cannot change a password")
    async with a.core.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT password_hash FROM password_credentials WHERE user_id = %s", (who.user_id,)
        )
        row = await cur.fetchone()
    check = await a.core.check_password(row[0] if row else None, body.current_password)
    if not check.ok:
        await a.auditor.record(
            "password.change_failed", subject=who.user_id, actor=who.actor, request=request,
            outcome="failed",
        )  # fmt: skip
        raise unauthorized("the current password is wrong")
    password = _policy(body.new_password)
    await set_password(a, d, request, who.user_id, password, "changed")
    return Response(status_code=204)


@router.post("/me/2fa/enrol")
async def enrol_two_factor(who: Self, a: Auth) -> dict[str, str]:
    """Start TOTP enrolment: a secret and its provisioning URI (confirm with a code next)."""
    if who.kind != "user":
        raise ProblemError(403, "Forbidden", "an API key cannot enrol a second factor")
    secret = new_totp_secret()
    async with a.core.pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO totp_credentials (user_id, secret_sealed) VALUES (%s, %s)"
            " ON CONFLICT (user_id) DO UPDATE SET secret_sealed = EXCLUDED.secret_sealed,"
            " last_step = NULL WHERE totp_credentials.confirmed_at IS NULL RETURNING 1",
            (who.user_id, a.core.seal_secret(who.user_id, secret)),
        )
        if await cur.fetchone() is None:
            raise ProblemError(409, "Already enabled", "disable the second factor first")
    uri = provisioning_uri(secret, account=who.user_id, issuer=a.settings.totp_issuer)
    return {"secret": secret, "provisioning_uri": uri}


@router.post("/me/2fa/confirm")
async def confirm_two_factor(
    body: CodeBody, request: Request, who: Self, a: Auth, d: D
) -> dict[str, Any]:
    """Confirm enrolment with a code: from now on login needs it. Recovery codes, shown once."""
    if not body.code or not await consume_totp(a, who.user_id, body.code, confirmed=False):
        raise ProblemError(400, "Invalid code", "the code does not match the enrolled secret")
    codes = new_recovery_codes(10)
    async with a.core.pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE totp_credentials SET confirmed_at = now() WHERE user_id = %s", (who.user_id,)
        )
        await conn.execute("DELETE FROM recovery_codes WHERE user_id = %s", (who.user_id,))
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES (%s, %s)",
                [(who.user_id, hash_recovery_code(c)) for c in codes],
            )
    await d.publisher.publish(EnableTwoFactor(user_id=who.user_id), actor=who.actor)
    return {"enabled": True, "recovery_codes": codes}


@router.post("/me/2fa/disable", status_code=204)
async def disable_two_factor(
    body: CodeBody, request: Request, who: Self, a: Auth, d: D
) -> Response:
    """Turn the second factor off; needs a fresh code (or a recovery code)."""
    method = await check_second_factor(a, who.user_id, body.code, body.recovery_code)
    if method is None:
        raise ProblemError(400, "Invalid code", "a current second factor is needed")
    async with a.core.pool.connection() as conn, conn.transaction():
        await conn.execute("DELETE FROM totp_credentials WHERE user_id = %s", (who.user_id,))
        await conn.execute("DELETE FROM recovery_codes WHERE user_id = %s", (who.user_id,))
    await d.publisher.publish(DisableTwoFactor(user_id=who.user_id), actor=who.actor)
    return Response(status_code=204)


async def _create_key(
    request: Request,
    who: Principal,
    a: AuthRuntime,
    d: Deps,
    body: ApiKeyBody,
    replaces: str | None = None,
    replaces_until: datetime | None = None,
) -> JSONResponse:
    if who.kind != "user":
        raise ProblemError(403, "Forbidden", "API keys are created with a login, not a key")
    unknown = set(body.scopes) - a.access.permissions
    if unknown:
        raise ProblemError(422, "Unknown scopes", f"unknown scopes: {sorted(unknown)}")
    beyond = set(body.scopes) - who.permissions
    if beyond and ADMIN not in who.permissions:
        raise ProblemError(403, "Forbidden", f"you cannot grant scopes you lack: {sorted(beyond)}")
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise ProblemError(422, "Invalid expiry", "expires_at is in the past")
    key = new_api_key()
    async with a.core.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO api_key_secrets (key_id, user_id, secret_hash) VALUES (%s, %s, %s)",
            (key.public_id, who.user_id, key.secret_hash),
        )
    command = CreateApiKey(
        user_id=who.user_id,
        key_id=key.public_id,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
        replaces=replaces,
        replaces_until=replaces_until,
    )
    response = await submit(
        request, d, command, actor=who.actor, success_status=201,
        extra={"key_id": key.public_id, "api_key": key.token},
    )  # fmt: skip
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/api-keys", status_code=202)
async def create_api_key(
    body: ApiKeyBody, request: Request, who: Self, a: Auth, d: D
) -> JSONResponse:
    """A new API key, shown once (`uait_<id>_<secret>`). `Prefer: wait=N` waits until usable."""
    return await _create_key(request, who, a, d, body)


@router.post("/api-keys/{key_id}/rotate", status_code=202, responses=problem_responses(404))
async def rotate_api_key(
    key_id: str, body: RotateKeyBody, request: Request, who: Self, a: Auth, d: D
) -> JSONResponse:
    """A successor with the same scopes; the old key works until the overlap ends."""
    old = await _own_key(a, who, key_id)
    until = datetime.now(UTC) + timedelta(seconds=body.overlap_s)
    new = ApiKeyBody(name=old["name"], scopes=old["scopes"], expires_at=old["expires_at"])
    return await _create_key(request, who, a, d, new, replaces=key_id, replaces_until=until)


async def _own_key(a: AuthRuntime, who: Principal, key_id: str) -> dict[str, Any]:
    async with a.core.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT key_id, user_id::text AS user_id, name, scopes, expires_at, revoked_at"
            " FROM api_keys WHERE key_id = %s AND revoked_at IS NULL",
            (key_id,),
        )
        row: dict[str, Any] | None = await cur.fetchone()
    if row is None or not who.owns(row["user_id"]):
        raise ProblemError(404, "API key not found", "no such active key of yours")
    return row


@router.get("/api-keys")
async def list_api_keys(who: Self, a: Auth) -> dict[str, Any]:
    """Your keys (never their secrets), with when each was last used."""
    async with a.core.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT k.key_id, k.name, k.scopes, k.created_at, k.expires_at, k.revoked_at,"
            " k.replaced_by, k.replaced_until, s.last_used_at FROM api_keys k"
            " LEFT JOIN api_key_secrets s USING (key_id) WHERE k.user_id = %s"
            " ORDER BY k.created_at DESC LIMIT 500",
            (who.user_id,),
        )
        return {"items": list(await cur.fetchall())}


@router.delete("/api-keys/{key_id}", status_code=202, responses=problem_responses(404))
async def revoke_api_key(key_id: str, request: Request, who: Self, a: Auth, d: D) -> JSONResponse:
    """Revoke a key: refused at once by every replica, then recorded."""
    row = await _own_key(a, who, key_id)
    if a.redis is not None:
        await a.redis.set(KEY_DENY + key_id, "1", ex=30 * 86_400)
    a.authenticator.forget_key(key_id)
    command = RevokeApiKey(user_id=row["user_id"], key_id=key_id)
    return await submit(request, d, command, actor=who.actor, success_status=200)


@router.post("/auth/actor-token")
async def actor_token(who: Self, a: Auth) -> dict[str, Any]:
    """A signed actor token for a producer that writes commands to Kafka itself (typically
    with a service's API key): the envelope's ``actor`` must be the ``actor`` answered here,
    and the token's scopes are your permissions. It lives `actor_ttl` (5 min): fetch a new one
    before it ends."""
    token = a.tokens.issue_actor(
        subject=who.actor, scopes=sorted(who.permissions), session_id=who.session_id
    )
    return {"actor": who.actor, "actor_token": token, "expires_in": a.tokens.config.actor_ttl_s}
