"""Administration of users (paged listing, roles, disable, erase), the audit log, and JWKS."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from psycopg.rows import dict_row

from app.auth.models import DisableBody, RoleBody
from app.auth.principal import SELF, Principal, require
from app.auth.runtime import AuthRuntime, auth
from app.commanding import submit
from app.deps import Deps, deps
from app.identity.routes_account import profile
from app.problems import V1_WRITE_PROBLEMS, ProblemError, problem_responses
from app.queries import BadCursorError, decode_cursor, encode_cursor
from events.identity.commands import AssignRole, DeleteUser, DisableUser, RevokeRole
from events.identity.roles import ROLES
from infra.identity import ROLES_OF_USER

router = APIRouter(
    prefix="/v1", tags=["admin"], responses=problem_responses(*V1_WRITE_PROBLEMS, 404)
)
jwks_router = APIRouter(tags=["auth"])
Auth = Annotated[AuthRuntime, Depends(auth)]
D = Annotated[Deps, Depends(deps)]
Reader = Annotated[Principal, Depends(require("users:read"))]
Writer = Annotated[Principal, Depends(require("users:write"))]


def _uuid_path(value: str) -> str:
    import uuid

    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ProblemError(404, "User not found", "no such user") from None


@router.get("/users")
async def list_users(
    who: Reader,
    a: Auth,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    status: Annotated[str | None, Query(pattern="^(active|disabled|erased)$")] = None,
) -> dict[str, Any]:
    """Every user, oldest first, paged by an opaque cursor."""
    try:
        after = decode_cursor(cursor) if cursor else None
    except BadCursorError as exc:
        raise ProblemError(400, "Bad cursor", str(exc)) from exc
    async with a.core.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT user_id::text AS user_id, email_sealed, name_sealed, status, email_verified,"
            " two_factor, created_at, " + ROLES_OF_USER + " AS roles"
            " FROM users u WHERE (%s::text IS NULL OR user_id::text > %s)"
            " AND (%s::text IS NULL OR status = %s) ORDER BY user_id::text LIMIT %s",
            (after, after, status, status, limit + 1),
        )
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = await a.core.unseal_rows(rows[:limit])
    return {"items": rows, "next_cursor": encode_cursor(rows[-1]["user_id"]) if more else None}


@router.get("/users/{user_id}", responses=problem_responses(404))
async def get_user(user_id: str, who: Annotated[Principal, Depends(require(SELF))], a: Auth) -> Any:
    """One user: yourself, or anyone with `users:read`."""
    user_id = _uuid_path(user_id)
    if user_id != who.user_id and "users:read" not in who.permissions:
        raise ProblemError(404, "User not found", "no such user")
    row = await profile(a, user_id)
    if row is None:
        raise ProblemError(404, "User not found", "no such user")
    return row


async def _email_hmac(a: AuthRuntime, user_id: str) -> str:
    async with a.core.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT email_hmac FROM users WHERE user_id = %s AND status <> 'erased'", (user_id,)
        )
        row = await cur.fetchone()
    if row is None:
        raise ProblemError(404, "User not found", "no such user")
    return str(row[0])


@router.post("/users/{user_id}/roles", status_code=202)
async def assign_role(
    user_id: str, body: RoleBody, request: Request, who: Writer, d: D
) -> JSONResponse:
    user_id = _uuid_path(user_id)
    if body.role not in ROLES:
        raise ProblemError(422, "Unknown role", f"roles are {sorted(ROLES)}")
    command = AssignRole(user_id=user_id, role=body.role)
    return await submit(request, d, command, actor=who.actor, success_status=200)


@router.delete("/users/{user_id}/roles/{role}", status_code=202)
async def revoke_role(
    user_id: str, role: str, request: Request, who: Writer, a: Auth, d: D
) -> JSONResponse:
    """Take a role away; the user's sessions end so no token keeps the old role."""
    user_id = _uuid_path(user_id)
    if role not in ROLES:
        raise ProblemError(422, "Unknown role", f"roles are {sorted(ROLES)}")
    response = await submit(
        request, d, RevokeRole(user_id=user_id, role=role), actor=who.actor, success_status=200
    )
    await a.deny_sessions(await a.sessions.revoke(user_id, None, f"role {role} revoked"))
    return response


@router.post("/users/{user_id}/disable", status_code=202)
async def disable_user(
    user_id: str, body: DisableBody, request: Request, who: Writer, a: Auth, d: D
) -> JSONResponse:
    user_id = _uuid_path(user_id)
    await _email_hmac(a, user_id)
    response = await submit(
        request, d, DisableUser(user_id=user_id, reason=body.reason), actor=who.actor,
        success_status=200,
    )  # fmt: skip
    await a.deny_sessions(await a.sessions.revoke(user_id, None, "disabled"))
    return response


@router.delete("/users/{user_id}", status_code=202, responses=problem_responses(404))
async def erase_user(
    user_id: str,
    request: Request,
    who: Annotated[Principal, Depends(require(SELF))],
    a: Auth,
    d: D,
) -> JSONResponse:
    """Erase a user (yourself, or anyone with `users:write`): their personal data is destroyed."""
    user_id = _uuid_path(user_id)
    if user_id != who.user_id and "users:write" not in who.permissions:
        raise ProblemError(404, "User not found", "no such user")
    email_hmac = await _email_hmac(a, user_id)
    response = await submit(
        request, d, DeleteUser(user_id=user_id, email_hmac=email_hmac), actor=who.actor,
        success_status=200,
    )  # fmt: skip
    await a.deny_sessions(await a.sessions.revoke(user_id, None, "erased"))
    return response


@router.get("/audit")
async def audit_log(
    who: Annotated[Principal, Depends(require("audit:read"))],
    a: Auth,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=64)] = None,
    subject: Annotated[str | None, Query(max_length=64)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: Annotated[int | None, Query(ge=1, description="position cursor: older entries")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    """The audit log, newest first, filterable by actor, action, subject and time."""
    async with a.core.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT * FROM audit_log WHERE (%s::text IS NULL OR actor = %s)"
            " AND (%s::text IS NULL OR action = %s) AND (%s::text IS NULL OR subject = %s)"
            " AND (%s::timestamptz IS NULL OR at >= %s)"
            " AND (%s::timestamptz IS NULL OR at < %s) AND (%s::bigint IS NULL OR position < %s)"
            " ORDER BY position DESC LIMIT %s",
            (actor, actor, action, action, subject, subject, since, since, until, until,
             before, before, limit + 1),
        )  # fmt: skip
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next_before": rows[-1]["position"] if more else None}


@jwks_router.get("/.well-known/jwks.json")
async def jwks(a: Auth) -> JSONResponse:
    """The public keys that verify this service's tokens (RFC 7517)."""
    return JSONResponse(a.keys.get().jwks(), headers={"Cache-Control": "public, max-age=60"})
