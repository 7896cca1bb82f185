"""Submit a command: publish it, note it as accepted, and honour ``Prefer: wait=N``."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import psycopg
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from psycopg_pool import PoolTimeout

from app.problems import ProblemError, problem
from events.ids import uuid7
from infra.publisher import BrokerUnavailableError, MessageTooLargeError
from telemetry import logs

if TYPE_CHECKING:
    from fastapi import Request

    from app.deps import Deps
    from events.base import Command
    from events.envelope import Envelope

log = logging.getLogger("uait.ingress")

_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", re.IGNORECASE)

# How a rejected outcome is told over HTTP when the client waited for it.
_REJECTION_STATUS = {
    "not_found": 404,
    "too_large": 413,
    "domain": 409,
    "unauthorized": 403,
    "invalid": 422,
    "unknown_type": 422,
    "malformed": 422,
    "cancelled": 409,
    "deadline": 504,
    "failed": 502,
}


def preferred_wait(prefer: str | None, cap: float) -> float:
    """Seconds to wait from an RFC 7240 ``Prefer: wait=N`` header (0 when absent)."""
    if not prefer:
        return 0.0
    match = _WAIT.search(prefer)
    return min(float(match.group(1)), cap) if match else 0.0


_BASES: dict[tuple[Any, ...], str] = {}


def status_url(request: Request, command_id: Any) -> str:
    """The absolute URL of ``GET /v1/commands/{id}`` (built directly: url_for walks every
    route, which costs more than the rest of a publish; the base URL is kept per scheme, host
    and root path, which Starlette would parse again on every request)."""
    scope = request.scope
    key = (
        scope.get("scheme"),
        scope.get("server"),
        scope.get("app_root_path", scope.get("root_path")),  # as Starlette's base_url
        request.headers.get("host"),
    )
    base = _BASES.get(key)
    if base is None:
        if len(_BASES) > 1000:  # the Host header is the client's to choose
            _BASES.clear()
        base = _BASES[key] = str(request.base_url).rstrip("/")
    return f"{base}/v1/commands/{command_id}"


async def note_accepted(d: Deps, envelope: Envelope, command: Command, actor: str) -> None:
    """The command_log row of a published command. Best effort: the command is already on
    Kafka, and the worker records the same row when it starts it; failing here would make a
    retrying client send the command twice."""
    try:
        row = (envelope.message_id, command.CONTEXT, command.TYPE, envelope.occurred_at, actor)
        if d.accepted is not None:
            await d.accepted.note(row)
        else:
            await d.queries.log_accepted(*row)
    except (psycopg.Error, PoolTimeout) as exc:
        log.warning("could not note command %s as accepted: %s", envelope.message_id, exc)


async def submit(
    request: Request,
    d: Deps,
    command: Command,
    *,
    actor: str,
    success_status: int,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    # The id is chosen here so that a 503 can name it: a send the broker did not confirm in
    # time stays in the producer's buffer and may still be delivered once the broker is back.
    message_id = uuid7()
    try:
        envelope = await d.publisher.publish(command, actor=actor, message_id=message_id)
    except MessageTooLargeError as exc:
        raise ProblemError(413, "Command too large", str(exc)) from exc
    except BrokerUnavailableError as exc:
        if not exc.maybe_sent:
            raise ProblemError(
                503,
                "Message broker unavailable",
                "the command was not accepted; retry later",
                headers={"Retry-After": "5"},
            ) from exc
        raise ProblemError(
            503,
            "Message broker unavailable",
            "the broker did not confirm the command; it may still be delivered later: check"
            " status_url before sending it again",
            headers={"Retry-After": "5"},
            command_id=str(message_id),
            status_url=status_url(request, message_id),
        ) from exc
    command_id = envelope.message_id
    cid = str(command_id)
    logs.command_id.set(cid)
    logs.correlation_id.set(str(envelope.correlation_id))
    await note_accepted(d, envelope, command, actor)
    url = status_url(request, cid)
    accepted = {"command_id": cid, "status_url": url, **(extra or {})}
    wait = preferred_wait(request.headers.get("prefer"), d.settings.max_wait_s)
    headers = {"Location": url}
    if wait <= 0:
        return JSONResponse(accepted, status_code=202, headers=headers)
    headers["Preference-Applied"] = f"wait={wait:g}"
    outcome: dict[str, Any] | None = None

    async def finished() -> bool:
        nonlocal outcome
        row = await d.queries.command(command_id)
        if row is not None and row["status"] in ("succeeded", "rejected"):
            outcome = row
            return True
        return False

    await d.watcher.wait_for_check(finished, wait)
    if outcome is None:
        return JSONResponse(accepted, status_code=202, headers=headers)
    body = jsonable_encoder({**outcome, **accepted})
    if outcome["status"] == "succeeded":
        return JSONResponse(body, status_code=success_status, headers=headers)
    return problem(
        _REJECTION_STATUS.get(outcome["code"] or "", 422),
        "Command rejected",
        outcome["reason"] or "",
        type_=f"urn:uait:problem:rejected:{outcome['code']}",
        headers=headers,
        # The problem's own members (status, detail, ...) win over the outcome's fields.
        outcome_status=outcome["status"],
        **{k: v for k, v in body.items() if k not in ("reason", "status", "detail", "type")},
    )
