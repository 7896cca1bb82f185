"""Actor tokens on Kafka: issuing them (reused while fresh) and checking one against a command.

Every command carries a signed, short-lived token naming its actor and scopes, so a producer
that can write to a topic still cannot act as someone else. The token is checked against the
time the command was made (``occurred_at``, itself never in the future), not the time it is
consumed: a backlog that waited in Kafka is still accepted, a forged or stolen-and-expired token
is not. Issued tokens are reused while they have more than a minute left, so workers verify
each one once (the verified-token cache) instead of once per command.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from security.jose import TokenError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from security.keyset import KeySet
    from security.tokens import Claims, Tokens

SELF = "account:self"
ADMIN_OF_USERS = "users:write"
REUSE_MARGIN_S = 60


class ActorRejectedError(Exception):
    """Raised when a command's actor token is missing, invalid, or lacks the needed scope."""


@dataclass(frozen=True)
class Demand:
    """What a command asks of its actor: a scope, and for self-service commands, the user."""

    scope: str
    user_id: str | None = None


class ActorIssuer:
    """Issues actor tokens, one per (actor, scopes) while it stays fresh."""

    def __init__(self, tokens: Tokens, *, clock: Callable[[], float] = time.time) -> None:
        self.tokens = tokens
        self.clock = clock
        self._issued: dict[tuple[str, frozenset[str]], tuple[float, str]] = {}
        self._lock = threading.Lock()

    def issue(self, actor: str, scopes: list[str] | tuple[str, ...] | frozenset[str]) -> str:
        key = (actor, scopes if isinstance(scopes, frozenset) else frozenset(scopes))
        now = self.clock()
        with self._lock:
            hit = self._issued.get(key)
            if hit is not None and hit[0] - now > REUSE_MARGIN_S:
                return hit[1]
        token = self.tokens.issue_actor(subject=actor, scopes=sorted(key[1]))
        expires = now + self.tokens.config.actor_ttl_s
        with self._lock:
            if len(self._issued) > 10_000:
                self._issued.clear()
            self._issued[key] = (expires, token)
        return token


def user_of(actor: str) -> str | None:
    """``user:<id>`` or ``user:<id>/key:<key id>`` -> ``<id>``."""
    head = actor.split("/", 1)[0]
    return head[5:] if head.startswith("user:") else None


class ActorVerifier:
    """Checks commands' actor tokens with the shared signing keys (a worker's side)."""

    def __init__(
        self,
        keys: Callable[[], KeySet],
        make_tokens: Callable[[Callable[[], float]], Tokens],
        *,
        leeway_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._at = threading.local()
        self.tokens = make_tokens(lambda: float(getattr(self._at, "value", clock())))
        self.keys = keys
        self.leeway_s = leeway_s
        self.clock = clock

    def check(self, token: str | None, actor: str, occurred_at: datetime, demand: Demand) -> Claims:
        """The verified claims; raises ActorRejectedError with a reason for the outcome."""
        if not token:
            raise ActorRejectedError("the command carries no actor token")
        made = occurred_at.timestamp()
        if made > self.clock() + self.leeway_s:
            raise ActorRejectedError("the command claims to be made in the future")
        self._at.value = made
        try:
            claims = self.tokens.verify_actor(token)
        except TokenError as exc:
            raise ActorRejectedError(f"invalid actor token: {exc.reason}") from None
        finally:
            del self._at.value
        if claims.subject != actor:
            raise ActorRejectedError(
                f"the actor token names {claims.subject!r}, not the envelope's actor"
            )
        if demand.scope not in claims.scopes:
            raise ActorRejectedError(f"the actor lacks the scope {demand.scope!r}")
        if (
            demand.scope == SELF
            and demand.user_id is not None
            and user_of(actor) != demand.user_id
            and ADMIN_OF_USERS not in claims.scopes
        ):
            raise ActorRejectedError("a user may change only their own account")
        return claims
