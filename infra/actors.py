"""Actor tokens for commands published outside the ingress: the CLI, benchmarks, tools.

Whoever holds the key-encryption key can sign: the operator vouches for the command, with
exactly the scope it needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from security.actors import ActorIssuer
from security.jose import TokenConfig
from security.keyring import Keyring
from security.keystore import ensure_key, load_key_set
from security.tokens import Tokens

if TYPE_CHECKING:
    from collections.abc import Callable

    from events.base import Command
    from infra.settings import Settings


def operator_signer(settings: Settings) -> Callable[[str, Command], str] | None:
    """A signer from the settings' keys, or None without a key-encryption key."""
    value = settings.key_encryption_keys.get_secret_value()
    if not value:
        return None
    keyring = Keyring.from_setting(value)
    config = TokenConfig(issuer=settings.jwt_issuer, audience=settings.jwt_audience)
    with psycopg.connect(settings.database_url) as conn:
        ensure_key(conn, keyring, alg=settings.jwt_algorithm)
        keys = load_key_set(conn, keyring, max_token_ttl_s=config.max_token_ttl_s)
    issuer = ActorIssuer(Tokens(lambda: keys, config))

    def sign(actor: str, command: Command) -> str:
        return issuer.issue(actor, (command.required_permission(),))

    return sign
