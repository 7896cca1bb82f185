"""Readiness probes of the embedded services, and a free port to start one on."""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING

import psycopg
import redis

if TYPE_CHECKING:
    from pathlib import Path


class StackStartError(RuntimeError):
    """An embedded service exited early or did not answer before the deadline."""


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def kafka_metadata_probe(port: int, timeout_s: float = 1.0) -> None:
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


def redis_probe(sock: Path) -> None:
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1.0)
    try:
        client.ping()
    finally:
        client.close()


def check_no_redis_at(sock: Path) -> None:
    """Refuse to take over the socket of a Redis another process still runs."""
    if not sock.exists():
        return
    try:
        redis_probe(sock)
    except (redis.RedisError, OSError):
        return  # stale socket file
    raise StackStartError(
        f"a Redis server already answers at {sock}: is another stack using "
        f"{sock.parent}? Stop it, or choose another data dir."
    )


def postgres_probe(url: str) -> None:
    with psycopg.connect(url, connect_timeout=2, autocommit=True) as conn:
        conn.execute("SELECT 1")
