"""Database URLs: another database on the same server, creating and dropping one, and the
``eventsourcing`` library's settings for a URL."""

from __future__ import annotations

import getpass
import logging
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger("uait.stack")


def _is_url(conninfo: str) -> bool:
    return conninfo.startswith(("postgresql://", "postgres://"))


def database_url_for(url: str, dbname: str) -> str:
    """The same connection string pointing at database ``dbname``."""
    if not _is_url(url):  # key=value conninfo
        return make_conninfo(url, dbname=dbname)
    parts = urlsplit(url)
    # A dbname in the query would override the path, so drop it. The other
    # parameters are kept byte for byte: libpq does not read "+" as a space.
    query = [
        item
        for item in parts.query.split("&")
        if item and unquote(item.partition("=")[0]) != "dbname"
    ]
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe=""), query="&".join(query)))


def create_database(url: str, dbname: str) -> str:
    """Create ``dbname`` (if missing) on the server of ``url``; return its URL.

    Also enables pgvector in it when the server has it.
    """
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
        if exists.fetchone() is None:
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                log.info("created database %s", dbname)
            except (pg_errors.DuplicateDatabase, pg_errors.UniqueViolation):
                pass  # another process created it between our check and now
    new_url = database_url_for(url, dbname)
    _enable_vector(new_url, dbname)
    return new_url


def _enable_vector(url: str, dbname: str) -> None:
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except (pg_errors.FeatureNotSupported, pg_errors.UndefinedFile) as exc:
        # The server has no pgvector: fine here, whoever needs vectors will say so.
        log.info("pgvector is not available in database %s: %s", dbname, exc)
    except pg_errors.UniqueViolation:
        pass  # created concurrently by another process


def drop_database(url: str, dbname: str) -> None:
    """Drop ``dbname`` (if present) on the server of ``url``, closing its sessions."""
    admin_url = url
    if conninfo_to_dict(url).get("dbname") == dbname:
        admin_url = database_url_for(url, "postgres")  # cannot drop the one we are in
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
        )
    log.info("dropped database %s", dbname)


def eventsourcing_env(database_url: str) -> dict[str, str]:
    """The ``eventsourcing`` library's PostgreSQL settings for a libpq URL or conninfo."""
    params: dict[str, Any] = conninfo_to_dict(database_url)
    host = params.get("host") or params.get("hostaddr")
    if not host:
        raise ValueError("database_url has no host (TCP host or ?host=/socket/dir)")
    # Same defaults as libpq: the OS user name, and the user name as database name.
    user = str(params.get("user") or getpass.getuser())
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": str(params.get("dbname") or user),
        "POSTGRES_HOST": str(host),
        "POSTGRES_PORT": str(params.get("port") or "5432"),
        "POSTGRES_USER": user,
        "POSTGRES_PASSWORD": str(params.get("password") or ""),
    }
