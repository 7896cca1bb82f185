"""The knowledge context's part of the ingress."""

from __future__ import annotations

from app.deps import HttpPart
from app.knowledge import routes, state
from app.ratelimit import WRITE_METHODS

HTTP = HttpPart(
    routers=(routes.router,),
    lanes=routes.LANES,
    start=state.start,
    events_permission="knowledge:read",
    # Knowledge writes count against their own policy, then the default one.
    rate_limit_routes=((WRITE_METHODS, routes.router.prefix, ("knowledge", "default")),),
)
