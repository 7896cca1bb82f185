"""Who is calling, and the one enforcement point of permissions (deny by default).

Every route outside health, metrics (by configuration) and JWKS depends on ``require(...)``: it
authenticates the request (bearer access token or ``X-API-Key``) and checks one permission.
Object-level checks (a user sees only their own sessions, keys and commands) use
``Principal.owns`` in the routes.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from app.problems import ProblemError
from events.identity.roles import ADMIN, SELF

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


@dataclass(frozen=True)
class Principal:
    user_id: str
    kind: Literal["user", "key"]
    permissions: frozenset[str]
    roles: tuple[str, ...] = ()
    session_id: str | None = None
    key_id: str | None = None
    amr: tuple[str, ...] = field(default=())

    @property
    def actor(self) -> str:
        """Who a command is from: the user, and the key when a key was used."""
        base = f"user:{self.user_id}"
        return f"{base}/key:{self.key_id}" if self.key_id else base

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.permissions

    def owns(self, user_id: str) -> bool:
        return self.user_id == user_id or self.is_admin


current_principal: ContextVar[Principal | None] = ContextVar("current_principal", default=None)
"""The principal of the request being served (read by the actor-token signer)."""


def unauthorized(detail: str = "missing or invalid credentials") -> ProblemError:
    return ProblemError(
        401,
        "Unauthorized",
        detail,
        type_="urn:uait:problem:unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="uait", error="invalid_token"'},
    )


def forbidden(permission: str) -> ProblemError:
    return ProblemError(
        403,
        "Forbidden",
        f"this needs the permission {permission!r}",
        type_="urn:uait:problem:forbidden",
    )


# Declared for the OpenAPI document (and its "Authorize" button); the Authenticator reads the
# headers itself, so a missing one becomes our 401 problem, not FastAPI's 403.
BEARER = HTTPBearer(auto_error=False, description="an access token from /v1/auth/login")
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="uait_<id>_<secret>")


async def authorize(request: Request, permission: str) -> Principal:
    """The authenticated principal of ``request``, refused unless it holds ``permission``."""
    principal: Principal = await request.app.state.auth.authenticator.authenticate(request)
    if permission not in principal.permissions:
        raise forbidden(permission)
    request.state.principal = principal
    current_principal.set(principal)
    return principal


def require(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the authenticated principal, refused unless it holds ``permission``."""

    async def dependency(
        request: Request,
        _bearer: HTTPAuthorizationCredentials | None = Security(BEARER),
        _key: str | None = Security(API_KEY),
    ) -> Principal:
        return await authorize(request, permission)

    dependency.__name__ = f"require_{permission.replace(':', '_')}"
    dependency.permission = permission  # type: ignore[attr-defined]  # read by app.lanes
    return dependency


__all__ = ["SELF", "Principal", "authorize", "forbidden", "require", "unauthorized"]
