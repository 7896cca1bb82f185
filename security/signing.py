"""Signing keys shared by all replicas: storage and rotation (``keystore``), and the cache
long-running processes keep of them (:class:`KeyCache`).

A process reloads its key set every ``refresh_period_s`` and, at most once per
``unknown_kid_interval_s``, when a token names a kid it does not know: random kids in hostile
tokens cannot make it hammer the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from security.keyset import KeySet, NoSigningKeyError, SigningKey, VerificationKey
from security.keystore import aload_key_set, ensure_key, load_key_set, rewrap_signing_keys, rotate

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg_pool import AsyncConnectionPool

    from security.keyring import Keyring

__all__ = [
    "KeyCache",
    "KeyCacheEmptyError",
    "KeySet",
    "NoSigningKeyError",
    "SigningKey",
    "VerificationKey",
    "aload_key_set",
    "ensure_key",
    "load_key_set",
    "rewrap_signing_keys",
    "rotate",
]

log = logging.getLogger("uait.security.keys")


class KeyCacheEmptyError(LookupError):
    """Raised by :meth:`KeyCache.get` before the first successful refresh."""


class KeyCache:
    """The current :class:`KeySet` of a long-running process."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        max_token_ttl_s: float,
        refresh_period_s: float = 30.0,
        unknown_kid_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keyring = keyring
        self._max_ttl = max_token_ttl_s
        self.refresh_period_s = refresh_period_s
        self._unknown_interval = unknown_kid_interval_s
        self._clock = clock
        self._keys: KeySet | None = None
        self._refreshed_at = float("-inf")
        self._unknown_at = float("-inf")
        self._requested = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def get(self) -> KeySet:
        if self._keys is None:
            raise KeyCacheEmptyError("signing keys not loaded yet: refresh the key cache first")
        return self._keys

    def refresh_sync(self, conn: psycopg.Connection[Any]) -> KeySet:
        return self._store(load_key_set(conn, self._keyring, max_token_ttl_s=self._max_ttl))

    async def refresh(
        self, pool_or_conn: psycopg.AsyncConnection[Any] | AsyncConnectionPool[Any]
    ) -> KeySet:
        if isinstance(pool_or_conn, psycopg.AsyncConnection):
            keys = await aload_key_set(pool_or_conn, self._keyring, max_token_ttl_s=self._max_ttl)
        else:
            async with pool_or_conn.connection() as conn:
                keys = await aload_key_set(conn, self._keyring, max_token_ttl_s=self._max_ttl)
        return self._store(keys)

    def due(self) -> bool:
        """Whether a refresh is wanted: the period has passed or an unknown kid asked for one."""
        return self._requested or self._clock() - self._refreshed_at >= self.refresh_period_s

    def note_unknown_kid(self, kid: str) -> bool:
        """Ask for a refresh (pass as ``Tokens(on_unknown_kid=...)``); True if one was asked.

        Rate-limited: within ``unknown_kid_interval_s`` of the last request, it does nothing.
        """
        now = self._clock()
        if now - self._unknown_at < self._unknown_interval:
            return False
        self._unknown_at = now
        self._requested = True
        log.info("token names unknown signing key %.64r: reloading keys", kid)
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._wake.set)
        return True

    async def run(self, pool: AsyncConnectionPool[Any]) -> None:
        """Refresh every period and on request, until cancelled; failures keep the last set."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        while True:
            if self.due():
                try:
                    await self.refresh(pool)
                except Exception as exc:  # the refresher must outlive a bad moment
                    log.warning("could not reload signing keys: %r", exc)
                    self._refreshed_at = self._clock()  # retry after a period, not in a loop
                    self._requested = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.refresh_period_s)
            self._wake.clear()

    def _store(self, keys: KeySet) -> KeySet:
        self._keys = keys
        self._refreshed_at = self._clock()
        self._requested = False
        return keys
