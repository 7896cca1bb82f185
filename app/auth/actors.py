"""The ingress signs each command it publishes with an actor token (see security.actors).

The token carries the scope the command needs (the ingress has already authorised it) and the
caller's own permissions, so a worker can tell an admin acting on another user from a user
acting on themselves. Tokens are reused per (actor, scopes) while fresh.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.auth.principal import current_principal

if TYPE_CHECKING:
    from events.base import Command
    from security.actors import ActorIssuer


class IngressSigner:
    def __init__(self, issuer: ActorIssuer) -> None:
        self.issuer = issuer

    def __call__(self, actor: str, command: Command) -> str:
        required = command.required_permission()
        principal = current_principal.get()
        if principal is not None and principal.actor == actor:
            if required in principal.permissions:  # the usual case: no new set to hash
                return self.issuer.issue(actor, principal.permissions)
            return self.issuer.issue(actor, principal.permissions | {required})
        return self.issuer.issue(actor, frozenset({required}))
