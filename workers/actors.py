"""The worker's check that every command's actor is who it says, with the scope it needs."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

import psycopg

from security.actors import ActorRejectedError, ActorVerifier, Demand
from security.jose import TokenConfig
from security.keyring import Keyring
from security.signing import KeyCache
from security.tokens import Tokens

if TYPE_CHECKING:
    from collections.abc import Callable

    from events.base import Command
    from events.envelope import Envelope
    from infra.settings import Settings
    from security.keyset import KeySet

log = logging.getLogger("uait.worker")

__all__ = ["ActorCheck", "ActorRejectedError", "demand_of"]


def demand_of(command: Command) -> Demand:
    return Demand(command.required_permission(), command.subject_user())


class ActorCheck:
    """Verifies envelopes' actor tokens; signing keys reload from PostgreSQL when due."""

    def __init__(self, settings: Settings) -> None:
        value = settings.key_encryption_keys.get_secret_value()
        if not value:
            raise SystemExit(
                "UAIT_KEY_ENCRYPTION_KEYS is not set: workers verify every command's actor token"
                " with the shared signing keys (UAIT_VERIFY_ACTORS=false turns that off)"
            )
        self.database_url = settings.database_url
        config = TokenConfig(issuer=settings.jwt_issuer, audience=settings.jwt_audience)
        self.cache = KeyCache(
            Keyring.from_setting(value),
            max_token_ttl_s=config.max_token_ttl_s,
            refresh_period_s=settings.signing_key_refresh_s,
        )
        self._lock = threading.Lock()
        self.verifier = ActorVerifier(self._keys, lambda clock: self._tokens(config, clock))

    def _tokens(self, config: TokenConfig, clock: Callable[[], float]) -> Tokens:
        return Tokens(self._keys, config, on_unknown_kid=self.cache.note_unknown_kid, clock=clock)

    def _keys(self) -> KeySet:
        with self._lock:
            if self.cache.due():
                try:
                    with psycopg.connect(self.database_url) as conn:
                        self.cache.refresh_sync(conn)
                except psycopg.Error as exc:
                    log.warning("could not reload signing keys: %s", exc)
            return self.cache.get()

    def __call__(self, envelope: Envelope, command: Command) -> None:
        """Raises ActorRejectedError when the command's actor cannot be verified."""
        demand = demand_of(command)
        try:
            self.verifier.check(envelope.actor_token, envelope.actor, envelope.occurred_at, demand)
        except ActorRejectedError as exc:
            if "unknown kid" not in str(exc):
                raise
            # A key rotated since the last reload: note_unknown_kid asked for one; try again.
            self.verifier.check(envelope.actor_token, envelope.actor, envelope.occurred_at, demand)
