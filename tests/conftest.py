"""Shared fixtures: one set of real services for the whole test session."""

from __future__ import annotations

import dataclasses
import secrets
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

import contexts  # noqa: F401  (registers every context's message types)
from infra.secrets import generate as generate_secrets
from infra.settings import Settings
from infra.stack import EmbeddedStack, Endpoints, create_database, drop_database

if TYPE_CHECKING:
    from collections.abc import Iterator

# Real processes (worker, projections, ingress) for tests/e2e and tests/security.
pytest_plugins = ["tests.e2e.fixtures"]


@pytest.fixture(scope="session")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    """Kafka, PostgreSQL and Redis for the session, with a database of its own.

    Services named by UAIT_KAFKA_BOOTSTRAP / UAIT_DATABASE_URL / UAIT_REDIS_URL are
    used as they are; the others are started under a temporary dir, so tests never
    touch dev data. The random database keeps a shared external server clean.
    """
    # Not under pytest's own temp root: another pytest process resets that root to 0700, which
    # locks out the embedded PostgreSQL (it runs as its own system user).
    data_dir = Path(tempfile.mkdtemp(prefix="uait-test-stack-"))
    stack = EmbeddedStack(Settings(), data_dir=data_dir)
    with stack as server:
        dbname = f"uait_test_{secrets.token_hex(6)}"
        database_url = create_database(server.database_url, dbname)
        try:
            yield dataclasses.replace(server, database_url=database_url)
        finally:
            try:
                drop_database(server.database_url, dbname)
            except psycopg.OperationalError as exc:
                # The server is gone: the database went with it (an embedded one), or a shared
                # server is down, in which case the failing tests have already said so.
                warnings.warn(f"could not drop {dbname}: {exc}", stacklevel=1)
    shutil.rmtree(data_dir, ignore_errors=True)


# One set of identity secrets for the whole test session: processes and tests that share a
# database must share the key-encryption key that wraps its signing keys.
TEST_SECRETS = generate_secrets()


def with_actor_keys(settings: Settings) -> Settings:
    """``settings`` with the session's key-encryption key: workers built from it verify actor
    tokens, and ``infra.actors.operator_signer(settings)`` signs commands they accept."""
    from pydantic import SecretStr

    kek = TEST_SECRETS["UAIT_KEY_ENCRYPTION_KEYS"]
    return settings.model_copy(update={"key_encryption_keys": SecretStr(kek)})


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """The tiny offline model's folder, built once and cached under ``.uait/models``."""
    from workers.inference import tiny

    return tiny.ensure(Path(__file__).resolve().parent.parent / ".uait" / "models")
