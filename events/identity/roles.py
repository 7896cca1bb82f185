"""The roles a user can have, and the permissions of the identity context and the platform.

Other contexts grant their own permissions to these roles in their declarations; the
``AccessPolicy`` of a process is built from all of them (``events.access``). API-key scopes are
permissions too; a key acts with the intersection of its scopes and its owner's current
permissions, so a demoted owner's keys lose what the owner lost.
"""

from __future__ import annotations

from events.access import ADMIN, Grants

REGISTER = "account:register"
"""Create an account: what the ingress vouches for on behalf of an anonymous visitor."""
AUDIT_WRITE = "audit:write"
"""Record an audit entry: the ingress's own scope for the auth flows it runs."""
SELF = "account:self"
"""Manage one's own account: profile, password, sessions, 2FA, API keys."""

ROLES: frozenset[str] = frozenset({"user", "viewer", "service", "auditor", ADMIN})

GRANTS: Grants = {
    SELF: ("user", "viewer", "service", "auditor"),
    "commands:read": ("user", "viewer", "service", "auditor"),
    "events:read": ("auditor",),
    "users:read": ("auditor",),
    "users:write": (),
    "audit:read": ("auditor",),
    REGISTER: (),
    AUDIT_WRITE: (),
    # Held ahead of the inference and agents contexts, whose declarations will grant them.
    "agents:run": ("user", "service"),
    "inference:run": ("user", "service"),
}

__all__ = ["ADMIN", "AUDIT_WRITE", "GRANTS", "REGISTER", "ROLES", "SELF"]
