"""Auth flows at the ingress: register, login (with a second factor), refresh, logout, sessions.

Answers never tell whether an email is registered: registration and password-reset requests
answer 202 alike, and a failed login is one 401 whatever failed (unknown users cost the same
argon2 work). Each flow records an audit entry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row

from app.auth.models import (
    LoginBody,
    MfaRequired,
    RefreshBody,
    RegisterBody,
    ResetConfirmBody,
    ResetRequestBody,
    SecondFactorBody,
    TokenBody,
    TokenPair,
)
from app.auth.principal import SELF, Principal, require, unauthorized
from app.auth.runtime import AuthRuntime, auth
from app.auth.second_factor import check_second_factor
from app.clientip import client_ip
from app.deps import Deps, deps
from app.problems import V1_WRITE_PROBLEMS, ProblemError, problem_responses
from events.identity.commands import ChangePassword, RegisterUser, VerifyEmail
from events.ids import uuid7
from infra.identity import ROLES_OF_USER, normalise_email, valid_email
from security.passwords import PasswordPolicyError, check_password_policy
from security.refresh import hash_token, new_refresh_token
from security.tokens import TokenError

router = APIRouter(
    prefix="/v1/auth", tags=["auth"], responses=problem_responses(*V1_WRITE_PROBLEMS, 404)
)
ACCEPTED = {"status": "accepted", "detail": "if the address can be used, a message is on its way"}
TOKEN_TTL = {"verify_email": timedelta(days=2), "reset_password": timedelta(hours=1)}


def _ip(request: Request, a: AuthRuntime) -> str:
    return client_ip(request.scope, a.settings.trusted_proxy_networks) or "unknown"


def _policy(password: str, *identity: str) -> str:
    try:
        return check_password_policy(password, identity=[i for i in identity if i])
    except PasswordPolicyError as exc:
        raise ProblemError(
            422, "Password refused", str(exc), type_=f"urn:uait:problem:password:{exc.code}"
        ) from None


async def _one_time_token(a: AuthRuntime, user_id: str, purpose: str) -> str:
    token = new_refresh_token().replace("rt_", "ot_", 1)
    async with a.core.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO one_time_tokens (token_hash, user_id, purpose, expires_at)"
            " VALUES (%s, %s, %s, %s)",
            (hash_token(token), user_id, purpose, datetime.now(UTC) + TOKEN_TTL[purpose]),
        )
    return token


async def _consume_token(a: AuthRuntime, token: str, purpose: str) -> str | None:
    async with a.core.pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE one_time_tokens SET used_at = now() WHERE token_hash = %s AND purpose = %s"
            " AND used_at IS NULL AND expires_at > now() RETURNING user_id",
            (hash_token(token), purpose),
        )
        row = await cur.fetchone()
    return str(row[0]) if row else None


async def find_user(a: AuthRuntime, email_hmac: str) -> dict[str, Any] | None:
    """The live user holding this email, with credential and 2FA state."""
    async with a.core.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            """
            SELECT u.user_id::text AS user_id, u.status, p.password_hash,
                   t.confirmed_at IS NOT NULL AS two_factor,
                   """
            + ROLES_OF_USER
            + """ AS roles
            FROM users u
            LEFT JOIN password_credentials p USING (user_id)
            LEFT JOIN totp_credentials t USING (user_id)
            WHERE u.email_hmac = %s AND u.status <> 'erased'
            """,
            (email_hmac,),
        )
        return cast("dict[str, Any] | None", await cur.fetchone())


async def user_state(a: AuthRuntime, user_id: str) -> dict[str, Any] | None:
    async with a.core.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT status, " + ROLES_OF_USER + " AS roles FROM users u WHERE user_id = %s",
            (user_id,),
        )
        return cast("dict[str, Any] | None", await cur.fetchone())


async def issue_session(
    a: AuthRuntime, request: Request, user_id: str, roles: list[str], amr: list[str]
) -> TokenPair:
    session_id, refresh = await a.sessions.start(
        user_id, amr=amr, ip=_ip(request, a), user_agent=request.headers.get("user-agent", "")
    )
    access = a.tokens.issue_access(
        subject=user_id, session_id=session_id, roles=roles, scopes=[], amr=amr
    )
    return TokenPair(
        access_token=access.token,
        expires_in=a.settings.access_token_ttl_s,
        refresh_token=refresh,
        session_id=session_id,
    )


@router.post("/register", status_code=202)
async def register(
    body: RegisterBody,
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    a: Annotated[AuthRuntime, Depends(auth)],
) -> dict[str, str]:
    """Create an account. The answer is the same whether or not the email was free."""
    email = normalise_email(body.email)
    if not valid_email(email):
        raise ProblemError(422, "Invalid email", "the email address is not valid")
    password = _policy(body.password, email.split("@")[0], body.name)
    email_hmac = a.core.email_hmac(email)
    existing = await find_user(a, email_hmac)
    password_hash = await a.core.hash_password(password)  # the same work either way
    if existing is not None:
        await a.notifier.send(
            email,
            "Your account",
            "Someone tried to register with this address, which already has an account. "
            "If it was you, log in or reset your password.",
        )
        await a.auditor.record(
            "user.register_existing", subject=existing["user_id"], actor="anonymous",
            request=request, outcome="refused",
        )  # fmt: skip
        return ACCEPTED
    user_id = str(uuid7())
    key = await a.core.new_user_key(user_id)
    async with a.core.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO password_credentials (user_id, password_hash) VALUES (%s, %s)",
            (user_id, password_hash),
        )
    command = RegisterUser(
        user_id=user_id,
        email_hmac=email_hmac,
        email_sealed=a.core.seal_field(key, user_id, "email", email),
        name_sealed=a.core.seal_field(key, user_id, "name", body.name),
    )
    await d.publisher.publish(command, actor="anonymous")
    token = await _one_time_token(a, user_id, "verify_email")
    await a.notifier.send(email, "Verify your email", f"Your verification token: {token}")
    return ACCEPTED


@router.post(
    "/login",
    responses={200: {"model": TokenPair | MfaRequired}, 401: {"description": "Unauthorized"}},
)
async def login(
    body: LoginBody, request: Request, a: Annotated[AuthRuntime, Depends(auth)]
) -> JSONResponse:
    """Email and password: tokens, or an mfa token when the account has a second factor."""
    email_hmac = a.core.email_hmac(normalise_email(body.email))
    ip = _ip(request, a)
    await a.throttle.check(email_hmac, ip)
    user = await find_user(a, email_hmac)
    check = await a.core.check_password(user["password_hash"] if user else None, body.password)
    if user is None or not check.ok or user["status"] != "active":
        await a.throttle.failed(email_hmac)
        await a.auditor.record(
            "login.failed", subject=user["user_id"] if user else None, actor="anonymous",
            request=request, outcome="failed",
        )  # fmt: skip
        raise unauthorized("invalid email or password")
    user_id = user["user_id"]
    if check.needs_rehash:
        new_hash = await a.core.hash_password(body.password)
        async with a.core.pool.connection() as conn:
            await conn.execute(
                "UPDATE password_credentials SET password_hash = %s WHERE user_id = %s",
                (new_hash, user_id),
            )
    await a.throttle.succeeded(email_hmac, ip)
    if user["two_factor"]:
        await a.auditor.record(
            "login.password_ok", subject=user_id, actor=f"user:{user_id}", request=request
        )
        mfa = MfaRequired(mfa_token=a.tokens.issue_mfa(subject=user_id), expires_in=300)
        return JSONResponse(mfa.model_dump())
    pair = await issue_session(a, request, user_id, list(user["roles"]), ["pwd"])
    await a.auditor.record(
        "login.ok", subject=user_id, actor=f"user:{user_id}", request=request,
        session_id=pair.session_id,
    )  # fmt: skip
    return JSONResponse(pair.model_dump(), headers={"Cache-Control": "no-store"})


@router.post("/login/2fa", responses={401: {"description": "Unauthorized"}})
async def login_second_factor(
    body: SecondFactorBody, request: Request, a: Annotated[AuthRuntime, Depends(auth)]
) -> JSONResponse:
    """Complete a login with a TOTP code (each works once) or a single-use recovery code."""
    try:
        claims = a.tokens.verify_mfa(body.mfa_token)
    except TokenError:
        raise unauthorized("invalid or expired mfa token") from None
    user_id = claims.subject
    await a.throttle.check(f"mfa:{user_id}", _ip(request, a))
    method = await check_second_factor(a, user_id, body.code, body.recovery_code)
    if method is None:
        await a.throttle.failed(f"mfa:{user_id}")
        await a.auditor.record(
            "login.2fa_failed", subject=user_id, actor=f"user:{user_id}", request=request,
            outcome="failed",
        )  # fmt: skip
        raise unauthorized("invalid second factor")
    state = await user_state(a, user_id)
    if state is None or state["status"] != "active":
        raise unauthorized("invalid second factor")
    pair = await issue_session(a, request, user_id, list(state["roles"]), ["pwd", method])
    await a.auditor.record(
        "login.ok", subject=user_id, actor=f"user:{user_id}", request=request,
        session_id=pair.session_id, detail=method,
    )  # fmt: skip
    return JSONResponse(pair.model_dump(), headers={"Cache-Control": "no-store"})


@router.post("/refresh", response_model=TokenPair, responses={401: {"description": "Refused"}})
async def refresh(
    body: RefreshBody, request: Request, a: Annotated[AuthRuntime, Depends(auth)]
) -> JSONResponse:
    """Rotate a refresh token. A rotated token used again revokes its whole session."""
    result = await a.sessions.rotate(body.refresh_token)
    if result.status == "reused":
        await a.deny_sessions([result.session_id])
        await a.auditor.record(
            "refresh.reuse_detected", subject=result.user_id, actor=f"user:{result.user_id}",
            request=request, outcome="refused", session_id=result.session_id,
        )  # fmt: skip
    if result.status != "ok":
        raise unauthorized(f"refresh token {result.status}")
    state = await user_state(a, result.user_id)
    if state is None or state["status"] != "active":
        revoked = await a.sessions.revoke(result.user_id, None, "user not active")
        await a.deny_sessions(revoked)
        raise unauthorized("refresh token revoked")
    access = a.tokens.issue_access(
        subject=result.user_id,
        session_id=result.session_id,
        roles=list(state["roles"]),
        scopes=[],
        amr=list(result.amr),
    )
    await a.auditor.record(
        "refresh.ok", subject=result.user_id, actor=f"user:{result.user_id}", request=request,
        session_id=result.session_id,
    )  # fmt: skip
    pair = TokenPair(
        access_token=access.token,
        expires_in=a.settings.access_token_ttl_s,
        refresh_token=result.refresh_token,
        session_id=result.session_id,
    )
    return JSONResponse(pair.model_dump(), headers={"Cache-Control": "no-store"})


@router.post("/logout", status_code=204, responses={401: {"description": "Unauthorized"}})
async def logout(
    request: Request,
    a: Annotated[AuthRuntime, Depends(auth)],
    who: Annotated[Principal, Depends(require(SELF))],
) -> Response:
    """End this session: its refresh tokens stop, its access tokens are refused everywhere."""
    if who.session_id is None:
        raise ProblemError(400, "Not a session", "an API key has no session to log out of")
    revoked = await a.sessions.revoke(who.user_id, who.session_id, "logout")
    await a.deny_sessions([who.session_id, *revoked])
    await a.auditor.record(
        "logout", subject=who.user_id, actor=who.actor, request=request, session_id=who.session_id
    )
    return Response(status_code=204)


@router.post("/logout-all", status_code=204, responses={401: {"description": "Unauthorized"}})
async def logout_everywhere(
    request: Request,
    a: Annotated[AuthRuntime, Depends(auth)],
    who: Annotated[Principal, Depends(require(SELF))],
) -> Response:
    """End every session of the caller."""
    revoked = await a.sessions.revoke(who.user_id, None, "logout everywhere")
    await a.deny_sessions(revoked)
    await a.auditor.record("logout.all", subject=who.user_id, actor=who.actor, request=request)
    return Response(status_code=204)


@router.get("/sessions")
async def list_sessions(
    a: Annotated[AuthRuntime, Depends(auth)],
    who: Annotated[Principal, Depends(require(SELF))],
) -> dict[str, Any]:
    """The caller's own live sessions."""
    rows = await a.sessions.list(who.user_id)
    return {"items": [{**r, "current": str(r["session_id"]) == who.session_id} for r in rows]}


@router.delete("/sessions/{session_id}", status_code=204, responses=problem_responses(404))
async def revoke_session(
    session_id: str,
    request: Request,
    a: Annotated[AuthRuntime, Depends(auth)],
    who: Annotated[Principal, Depends(require(SELF))],
) -> Response:
    """Revoke one of the caller's sessions (another user's is "not found")."""
    revoked = (
        await a.sessions.revoke(who.user_id, session_id, "revoked")
        if a.sessions.valid_id(session_id)
        else []
    )
    if not revoked:
        raise ProblemError(404, "Session not found", "no such live session of yours")
    await a.deny_sessions(revoked)
    await a.auditor.record(
        "session.revoked", subject=who.user_id, actor=who.actor, request=request,
        session_id=session_id,
    )  # fmt: skip
    return Response(status_code=204)


@router.post("/password-reset", status_code=202)
async def request_password_reset(
    body: ResetRequestBody, request: Request, a: Annotated[AuthRuntime, Depends(auth)]
) -> dict[str, str]:
    """Send a one-time reset token if the account exists; the answer is the same either way."""
    email = normalise_email(body.email)
    user = await find_user(a, a.core.email_hmac(email))
    if user is not None and user["status"] == "active":
        token = await _one_time_token(a, user["user_id"], "reset_password")
        await a.notifier.send(email, "Reset your password", f"Your reset token: {token}")
        await a.auditor.record(
            "password.reset_requested", subject=user["user_id"], actor="anonymous",
            request=request,
        )  # fmt: skip
    return ACCEPTED


@router.post("/password-reset/confirm", status_code=204, responses=problem_responses(400))
async def confirm_password_reset(
    body: ResetConfirmBody,
    request: Request,
    d: Annotated[Deps, Depends(deps)],
    a: Annotated[AuthRuntime, Depends(auth)],
) -> Response:
    """Set a new password with a reset token (single use); every session is ended."""
    password = _policy(body.new_password)
    user_id = await _consume_token(a, body.token, "reset_password")
    if user_id is None:
        raise ProblemError(400, "Invalid token", "the reset token is invalid, used or expired")
    await set_password(a, d, request, user_id, password, "reset")
    return Response(status_code=204)


async def set_password(
    a: AuthRuntime, d: Deps, request: Request, user_id: str, password: str, reason: str
) -> None:
    new_hash = await a.core.hash_password(password)
    async with a.core.pool.connection() as conn:
        await conn.execute(
            "INSERT INTO password_credentials (user_id, password_hash) VALUES (%s, %s)"
            " ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash,"
            " changed_at = now()",
            (user_id, new_hash),
        )
    revoked = await a.sessions.revoke(user_id, None, f"password {reason}")
    await a.deny_sessions(revoked)
    await d.publisher.publish(
        ChangePassword(user_id=user_id, reason=reason),
        actor=f"user:{user_id}",
    )


@router.post("/verify-email", status_code=202, responses=problem_responses(400))
async def verify_email(
    body: TokenBody,
    d: Annotated[Deps, Depends(deps)],
    a: Annotated[AuthRuntime, Depends(auth)],
) -> dict[str, str]:
    user_id = await _consume_token(a, body.token, "verify_email")
    if user_id is None:
        raise ProblemError(400, "Invalid token", "the token is invalid, used or expired")
    await d.publisher.publish(VerifyEmail(user_id=user_id), actor=f"user:{user_id}")
    return {"status": "accepted"}
