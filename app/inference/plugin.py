"""The inference context's part of the ingress."""

from __future__ import annotations

from app.deps import HttpPart
from app.inference import routes, state
from app.ratelimit import WRITE_METHODS

HTTP = HttpPart(
    routers=(routes.router,),
    start=state.start,
    events_permission="models:read",
    rate_limit_routes=(
        (WRITE_METHODS, "/v1/chat/completions", ("inference", "default")),
        (WRITE_METHODS, "/v1/completions", ("inference", "default")),
    ),
    error_shapes=(routes.OPENAI_PATHS,),
)
