"""Who is calling, as the edge middlewares (rate limits, idempotency) see it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request

from app.problems import ProblemError

if TYPE_CHECKING:
    from starlette.types import Scope


async def principal_of(scope: Scope) -> tuple[str, str] | None:
    """("key", key id) or ("user", user id) of a request whose credentials check out.

    Authenticated requests count against their principal (an office behind one NAT address is
    not one client); the rest against their address. The route authenticates again and reuses
    this result (``request.state.principal``); a refusal is left to the route to answer.
    """
    headers = dict(scope["headers"])
    if b"authorization" not in headers and b"x-api-key" not in headers:
        return None
    auth = getattr(scope["app"].state, "auth", None)
    if auth is None:
        return None
    try:
        principal = await auth.authenticator.authenticate(Request(scope))
    except ProblemError:
        return None
    if principal.key_id:
        return ("key", principal.key_id)
    return ("user", principal.user_id)
