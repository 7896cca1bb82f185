"""The second factor: a TOTP code (each step used once, by compare-and-set) or a recovery code."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from security.totp import hash_recovery_code, match_totp

if TYPE_CHECKING:
    from app.auth.runtime import AuthRuntime


async def check_second_factor(
    a: AuthRuntime, user_id: str, code: str | None, recovery_code: str | None
) -> str | None:
    """The method that passed (``otp`` or ``recovery``), or None. Consumes what it accepts."""
    if code:
        return "otp" if await consume_totp(a, user_id, code, confirmed=True) else None
    if recovery_code:
        async with a.core.pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM recovery_codes WHERE user_id = %s AND code_hash = %s RETURNING 1",
                (user_id, hash_recovery_code(recovery_code)),
            )
            return "recovery" if await cur.fetchone() else None
    return None


async def consume_totp(a: AuthRuntime, user_id: str, code: str, *, confirmed: bool) -> bool:
    """Accept ``code`` once: its time step must be later than the last one used."""
    async with a.core.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT secret_sealed, last_step FROM totp_credentials WHERE user_id = %s"
            " AND (confirmed_at IS NOT NULL) = %s",
            (user_id, confirmed),
        )
        row = await cur.fetchone()
        if row is None:
            return False
        secret = a.core.open_secret(user_id, bytes(row[0]))
        step = match_totp(secret, code, at=time.time())
        if step is None:
            return False
        # Compare-and-set: a replayed code (same or earlier step) updates nothing.
        cur = await conn.execute(
            "UPDATE totp_credentials SET last_step = %s WHERE user_id = %s"
            " AND (last_step IS NULL OR last_step < %s) RETURNING 1",
            (step, user_id, step),
        )
        return await cur.fetchone() is not None
