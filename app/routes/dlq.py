"""Admin routes for the dead letters: list, show, redrive (once), purge by age.

The same operations as ``uait dlq``, on the PostgreSQL index of the ``<topic>.dlq`` topics
(``infra.dead_letters``); a redrive publishes through the ingress's producer. Admins only.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Depends, Query
from fastapi.encoders import jsonable_encoder
from psycopg_pool import PoolTimeout

from app.auth.principal import require
from app.deps import Deps, deps
from app.problems import V1_PROBLEMS, V1_WRITE_PROBLEMS, ProblemError, problem_responses
from infra.dead_letters import (
    DeadLetterNotFoundError,
    DeadLetters,
    RedriveRefusedError,
    parse_age,
    parse_since,
)
from infra.publisher import BrokerUnavailableError

router = APIRouter(
    dependencies=[Depends(require("admin"))],
    prefix="/v1/admin/dlq",
    tags=["admin"],
    responses=problem_responses(*V1_PROBLEMS),
)

TopicQuery = Annotated[str | None, Query(max_length=249, description="original topic, or its .dlq")]


def _dead_letters(d: Annotated[Deps, Depends(deps)]) -> DeadLetters:
    return DeadLetters(d.queries.pool, d.contexts.names)


Index = Annotated[DeadLetters, Depends(_dead_letters)]


def _unavailable(exc: Exception) -> ProblemError:
    return ProblemError(503, "Dependency unavailable", str(exc), headers={"Retry-After": "5"})


@router.get("", responses=problem_responses(400))
async def list_dead_letters(
    index: Index,
    topic: TopicQuery = None,
    since: Annotated[
        str | None, Query(max_length=64, description="ISO 8601 time, or an age like 12h or 7d")
    ] = None,
    include_redriven: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    """Dead letters, newest first (those already redriven only with `include_redriven`)."""
    try:
        after = parse_since(since) if since else None
    except ValueError as exc:
        raise ProblemError(400, "Bad since", str(exc)) from exc
    try:
        rows = await index.find(
            topic=topic, since=after, include_redriven=include_redriven, limit=limit
        )
    except (psycopg.Error, PoolTimeout) as exc:
        raise _unavailable(exc) from exc
    return jsonable_encoder({"dead_letters": rows})


@router.get("/{dead_letter_id}", responses=problem_responses(404))
async def show_dead_letter(index: Index, dead_letter_id: uuid.UUID) -> Any:
    """One dead letter: its headers, error, traceback and the record's key and value."""
    try:
        return jsonable_encoder(await index.get(dead_letter_id))
    except DeadLetterNotFoundError as exc:
        raise ProblemError(404, "Dead letter not found", str(exc)) from exc
    except (psycopg.Error, PoolTimeout) as exc:
        raise _unavailable(exc) from exc


@router.post("/redrive", responses=problem_responses(*V1_WRITE_PROBLEMS))
async def redrive_all(
    index: Index, d: Annotated[Deps, Depends(deps)], topic: TopicQuery = None
) -> Any:
    """Redrive every open dead letter (of `topic`), oldest first; says which were refused."""
    try:
        done, refused = await index.redrive_many(d.publisher, topic=topic)
    except (psycopg.Error, PoolTimeout, BrokerUnavailableError) as exc:
        raise _unavailable(exc) from exc
    return jsonable_encoder({"redriven": done, "refused": refused})


@router.post("/{dead_letter_id}/redrive", responses=problem_responses(*V1_WRITE_PROBLEMS, 404))
async def redrive_one(
    index: Index, d: Annotated[Deps, Depends(deps)], dead_letter_id: uuid.UUID
) -> Any:
    """Put a dead letter back onto its original topic with fresh attempts. Refused (409) when
    it was redriven already or its command has an outcome (re-issue a rejected command)."""
    try:
        return jsonable_encoder(await index.redrive(dead_letter_id, d.publisher))
    except DeadLetterNotFoundError as exc:
        raise ProblemError(404, "Dead letter not found", str(exc)) from exc
    except RedriveRefusedError as exc:
        raise ProblemError(
            409, "Redrive refused", str(exc), type_="urn:uait:problem:redrive-refused"
        ) from exc
    except (psycopg.Error, PoolTimeout, BrokerUnavailableError) as exc:
        raise _unavailable(exc) from exc


@router.delete("", responses=problem_responses(*V1_WRITE_PROBLEMS))
async def purge_dead_letters(
    index: Index,
    older_than: Annotated[
        str, Query(max_length=32, description="dead-lettered longer ago than: 12h, 7d, 2w")
    ],
) -> Any:
    """Delete index rows older than an age (the topic's retention removes its records)."""
    try:
        age = parse_age(older_than)
    except ValueError as exc:
        raise ProblemError(400, "Bad older_than", str(exc)) from exc
    try:
        return {"purged": await index.purge(age)}
    except (psycopg.Error, PoolTimeout) as exc:
        raise _unavailable(exc) from exc
