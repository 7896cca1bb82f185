"""Roles, the permissions (``resource:action``) they grant, and the scopes an API key may carry.

Deny by default: a permission not granted here is refused. ``admin`` grants every permission.
API-key scopes are permissions too; a key acts with the intersection of its scopes and its
owner's current permissions, so a demoted owner's keys lose what the owner lost.
"""

from __future__ import annotations

ADMIN = "admin"
REGISTER = "account:register"
"""Create an account: what the ingress vouches for on behalf of an anonymous visitor."""
AUDIT_WRITE = "audit:write"
"""Record an audit entry: the ingress's own scope for the auth flows it runs."""
SELF = "account:self"
"""Manage one's own account: profile, password, sessions, 2FA, API keys."""

PERMISSIONS: frozenset[str] = frozenset(
    {
        SELF,
        "knowledge:read",
        "knowledge:write",
        "agents:run",
        "inference:run",
        "commands:read",
        "events:read",
        "users:read",
        "users:write",
        "audit:read",
        REGISTER,
        AUDIT_WRITE,
        "admin",
    }
)

ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "user": frozenset(
        {SELF, "knowledge:read", "knowledge:write", "agents:run", "inference:run", "commands:read"}
    ),
    "viewer": frozenset({SELF, "knowledge:read", "commands:read"}),
    "service": frozenset(
        {SELF, "knowledge:read", "knowledge:write", "agents:run", "inference:run", "commands:read"}
    ),
    "auditor": frozenset({SELF, "audit:read", "users:read", "events:read", "commands:read"}),
    ADMIN: PERMISSIONS,
}

ROLES: frozenset[str] = frozenset(ROLE_PERMISSIONS)


def permissions_of(roles: list[str] | tuple[str, ...] | frozenset[str]) -> frozenset[str]:
    granted: set[str] = set()
    for role in roles:
        granted |= ROLE_PERMISSIONS.get(role, frozenset())
    return frozenset(granted)
