"""A query that cannot reach PostgreSQL answers a 503 problem with Retry-After, not a 500."""

from __future__ import annotations

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from psycopg_pool import PoolTimeout

from app.problems import install


@pytest.mark.parametrize(
    "error",
    [
        PoolTimeout("couldn't get a connection after 5.00 sec"),
        psycopg.OperationalError("server closed the connection unexpectedly"),
    ],
)
def test_an_unreachable_database_is_a_503_problem_with_retry_after(error):
    app = FastAPI()
    install(app)

    @app.get("/thing")
    async def thing() -> None:
        raise error

    answer = TestClient(app, raise_server_exceptions=False).get("/thing")
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert answer.headers["content-type"] == "application/problem+json"
    body = answer.json()
    assert body["type"] == "urn:uait:problem:database-unavailable"
    assert body["instance"] == "/thing"


def test_other_database_errors_are_not_mistaken_for_an_outage():
    app = FastAPI()
    install(app)

    @app.get("/thing")
    async def thing() -> None:
        raise psycopg.errors.UniqueViolation("duplicate key")

    answer = TestClient(app, raise_server_exceptions=False).get("/thing")
    assert answer.status_code == 500
