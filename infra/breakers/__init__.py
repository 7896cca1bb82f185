"""Circuit breakers for external calls, with their state shared by every process through Redis.

A breaker watches the results of the last ``window_size`` calls. Once at least ``min_calls`` are
in the window and the failure rate (or the rate of calls slower than ``slow_call_s``) reaches its
threshold, it **opens**: callers fail fast with :class:`BreakerOpenError` (or get the fallback)
without touching the backend. After ``open_wait_s`` the next caller moves it to **half-open**, in
which at most ``half_open_probes`` trial calls run at a time while everybody else still fails
fast; when that many probes have succeeded it closes, and one failed (or slow) probe opens it
again. A call running longer than ``call_timeout_s`` is cut (``asyncio.timeout``) and counted as a
failure. Operators can force a breaker open or closed; a forced state sticks until a reset.

The window, the state and the probe slots live in one Redis hash (plus a list for the window) and
change only through one Lua script (``breaker.lua``, run with EVALSHA and loaded again on
NOSCRIPT). Admission and every recorded result are each one atomic step that reads the clock of
Redis, so all processes see the same breaker, and 200 concurrent failures open it exactly once:
every change of state bumps an epoch, and results of calls admitted under an older epoch no
longer count. A call costs two round trips to Redis (admit, record), about a millisecond, which
is nothing next to a call to an AI backend.

Why not ``purgatory`` (3.0): its breaker is a domain model evaluated in the process (a count of
consecutive failures against one threshold, with states closed/opened/half-opened that let every
caller through once the TTL has passed), and its Redis repository only persists that model's
fields piecewise (``update_state``, ``inc_failures``: GET, modify, SET). A rolling window with
rates, slow calls, a limited number of probes and forced states would mean replacing the model,
the state classes and the repository, which is all of it, and the read-modify-write updates
could still not be made atomic behind its repository interface. So this module is written
directly on Redis.

If Redis cannot be reached, calls go through unguarded (``fail_open=True``, the default: Redis
trouble must not stop the AI backends) or fail fast (``fail_open=False``).
"""

from infra.breakers.breaker import Breaker
from infra.breakers.model import (
    NAME_PATTERN,
    BreakerConfig,
    BreakerOpenError,
    BreakerState,
    BreakerStatus,
)
from infra.breakers.registry import BreakerRegistry
from infra.breakers.script import CHANGES_KEY, REGISTRY_KEY

__all__ = [
    "CHANGES_KEY",
    "NAME_PATTERN",
    "REGISTRY_KEY",
    "Breaker",
    "BreakerConfig",
    "BreakerOpenError",
    "BreakerRegistry",
    "BreakerState",
    "BreakerStatus",
]
