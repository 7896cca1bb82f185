"""Role-based access: which roles hold which permissions (``resource:action``).

Deny by default: a permission no grant gives to a role is refused. The roles are the identity
context's vocabulary; every context grants its own permissions to them (its declaration in the
context registry), and ``AccessPolicy.from_grants`` puts the grants together once per process.
``admin`` holds every permission there is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

ADMIN = "admin"

Grants = dict[str, tuple[str, ...]]
"""Permission -> the roles that hold it."""


class UnknownRoleError(ValueError):
    """Raised when a grant names a role that does not exist."""


@dataclass(frozen=True)
class AccessPolicy:
    role_permissions: Mapping[str, frozenset[str]]

    @classmethod
    def from_grants(
        cls, roles: Iterable[str], *grants: Mapping[str, Iterable[str]]
    ) -> AccessPolicy:
        known = frozenset(roles) | {ADMIN}
        held: dict[str, set[str]] = {role: set() for role in known}
        every = {ADMIN}
        for grant in grants:
            for permission, holders in grant.items():
                every.add(permission)
                for role in holders:
                    if role not in known:
                        raise UnknownRoleError(
                            f"{permission!r} is granted to unknown role {role!r}"
                        )
                    held[role].add(permission)
        held[ADMIN] = every
        return cls({role: frozenset(perms) for role, perms in held.items()})

    @property
    def permissions(self) -> frozenset[str]:
        """Every permission there is (what ``admin`` holds)."""
        return self.role_permissions[ADMIN]

    @property
    def roles(self) -> frozenset[str]:
        return frozenset(self.role_permissions)

    def permissions_of(self, roles: Iterable[str]) -> frozenset[str]:
        granted: set[str] = set()
        for role in roles:
            granted |= self.role_permissions.get(role, frozenset())
        return frozenset(granted)
