"""The identity context's part of the ingress: registration, login and sessions, the account,
administration of users, and the public keys that verify tokens."""

from __future__ import annotations

from app.deps import HttpPart
from app.identity import routes_account, routes_admin, routes_login

REGISTER_PATH = f"{routes_login.router.prefix}/register"

HTTP = HttpPart(
    routers=(
        routes_login.router,
        routes_account.router,
        routes_admin.router,
        routes_admin.jwks_router,
    ),
    events_permission="audit:read",
    rate_limit_routes=((frozenset({"POST"}), REGISTER_PATH, ("register",)),),
)
