"""``Idempotency-Key`` on POST and DELETE under /v1: one effect, the first answer replayed.

The key is reserved with ``SET NX PX`` at ``idem:{principal}:{key}`` before the request reaches
the route (so before anything is published), together with a SHA-256 of method, path and body.
While the first request runs, a duplicate gets 409; with another body, 422. The finished answer
(status, headers, body, hence the same ``command_id``) is kept for ``UAIT_IDEMPOTENCY_TTL_S``
and replayed with ``Idempotent-Replayed: true``. A 5xx answer (e.g. the broker is down, nothing
was accepted) releases the key, so the client can retry with it. The principal is the API key
or user the request authenticates as, else the client's address.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from app.asgi import replay as _replay
from app.asgi import send_problem
from app.clientip import client_ip
from app.edge import principal_of
from telemetry.metrics import IDEMPOTENCY_REQUESTS

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from infra.settings import Settings

log = logging.getLogger("uait.ingress")

HEADER = b"idempotency-key"
MAX_KEY_LENGTH = 255
METHODS = frozenset({"POST", "DELETE"})
# Headers of the first answer worth replaying (not Date, Server or rate-limit headers).
_REPLAYED_HEADERS = frozenset(
    {b"content-type", b"content-length", b"location", b"preference-applied", b"retry-after"}
)

# Update or delete the record only while it is still this request's reservation.
_FINISH_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if cjson.decode(v)['token'] ~= ARGV[1] then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return 1
"""


def valid_key(key: str) -> bool:
    """1-255 printable ASCII characters (space to tilde)."""
    return 1 <= len(key) <= MAX_KEY_LENGTH and all(" " <= c <= "~" for c in key)


def fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode("utf-8", "surrogateescape"), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


class IdempotencyStore:
    def __init__(self, redis: Redis, *, ttl_s: int, in_flight_s: float) -> None:
        self._redis = redis
        self._finish = redis.register_script(_FINISH_LUA)
        self.ttl_ms = ttl_s * 1000
        self.in_flight_ms = max(1000, round(in_flight_s * 1000))

    async def reserve(self, key: str, fp: str) -> tuple[str | None, dict[str, Any] | None]:
        """(token, None) when reserved for this request, else (None, the existing record)."""
        token = secrets.token_hex(16)
        record = orjson.dumps({"token": token, "fp": fp, "state": "in_flight"})
        for _ in range(3):
            if await self._redis.set(key, record, nx=True, px=self.in_flight_ms):
                return token, None
            existing = await self._redis.get(key)
            if existing is not None:
                return None, orjson.loads(existing)
            # It expired or was released between SET and GET: try to reserve again.
        return None, {"fp": fp, "state": "in_flight"}

    async def complete(self, key: str, token: str, fp: str, response: dict[str, Any]) -> None:
        record = orjson.dumps({"token": token, "fp": fp, "state": "done", **response})
        await self._finish(keys=[key], args=[token, record, self.ttl_ms])

    async def release(self, key: str, token: str) -> None:
        await self._finish(keys=[key], args=[token, "", 0])


class IdempotencyMiddleware:
    """ASGI middleware; the store is taken from ``app.state.idempotency`` (None without Redis)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.trusted = settings.trusted_proxy_networks

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in METHODS
            or not scope["path"].startswith("/v1/")
        ):
            await self.app(scope, receive, send)
            return
        raw_keys = [v for k, v in scope["headers"] if k == HEADER]
        if not raw_keys:
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        key = raw_keys[0].decode("latin-1")
        if len(raw_keys) > 1 or not valid_key(key):
            IDEMPOTENCY_REQUESTS.labels("invalid").inc()
            await send_problem(
                send,
                400,
                "Invalid Idempotency-Key",
                f"one Idempotency-Key of 1-{MAX_KEY_LENGTH} printable ASCII characters",
                "urn:uait:problem:idempotency-key-invalid",
                {},
                path,
            )
            return
        store: IdempotencyStore | None = getattr(scope["app"].state, "idempotency", None)
        body, more = await _read_body(receive)
        if more is not None:  # the client went away while sending
            await self.app(scope, _replay([more]), send)
            return
        fp = fingerprint(scope["method"], path, body)
        who = await principal_of(scope)
        owner = ":".join(who) if who else f"ip:{client_ip(scope, self.trusted)}"
        redis_key = f"idem:{owner}:{key}"
        try:
            if store is None:
                raise RedisError("no Redis configured (UAIT_REDIS_URL is empty)")
            token, existing = await store.reserve(redis_key, fp)
        except (RedisError, OSError) as exc:
            log.warning("idempotency store unavailable: %s", exc)
            IDEMPOTENCY_REQUESTS.labels("unavailable").inc()
            await send_problem(
                send,
                503,
                "Idempotency store unavailable",
                "the Idempotency-Key cannot be honoured now; nothing was done; retry later",
                "urn:uait:problem:idempotency-unavailable",
                {"Retry-After": "5"},
                path,
            )
            return
        if token is None:
            await self._answer_existing(send, existing or {}, fp, path)
            return
        assert store is not None
        IDEMPOTENCY_REQUESTS.labels("first").inc()
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def capturing_send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, _replay([_whole(body)], then=receive), capturing_send)
        except BaseException:
            await self._release(store, redis_key, token)
            raise
        if status >= 500:
            IDEMPOTENCY_REQUESTS.labels("released").inc()
            await self._release(store, redis_key, token)
            return
        kept = [
            [k.decode("latin-1"), v.decode("latin-1")]
            for k, v in headers
            if k.lower() in _REPLAYED_HEADERS
        ]
        response = {
            "status": status,
            "headers": kept,
            "body": base64.b64encode(b"".join(chunks)).decode(),
        }
        try:
            await store.complete(redis_key, token, fp, response)
        except (RedisError, OSError) as exc:
            # The answer is sent; a retry now finds the reservation until it expires (409).
            log.warning("could not keep the answer of Idempotency-Key %r: %s", key, exc)

    async def _answer_existing(
        self, send: Send, existing: dict[str, Any], fp: str, path: str
    ) -> None:
        if existing.get("fp") != fp:
            IDEMPOTENCY_REQUESTS.labels("mismatch").inc()
            await send_problem(
                send,
                422,
                "Idempotency-Key reused",
                "this Idempotency-Key was used with another request (method, path or body)",
                "urn:uait:problem:idempotency-key-reused",
                {},
                path,
            )
            return
        if existing.get("state") != "done":
            IDEMPOTENCY_REQUESTS.labels("in_flight").inc()
            await send_problem(
                send,
                409,
                "Request in progress",
                "a request with this Idempotency-Key is still being answered; retry later",
                "urn:uait:problem:idempotency-in-flight",
                {"Retry-After": "1"},
                path,
            )
            return
        IDEMPOTENCY_REQUESTS.labels("replayed").inc()
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in existing["headers"]]
        raw.append((b"idempotent-replayed", b"true"))
        await send({"type": "http.response.start", "status": existing["status"], "headers": raw})
        await send({"type": "http.response.body", "body": base64.b64decode(existing["body"])})

    @staticmethod
    async def _release(store: IdempotencyStore, key: str, token: str) -> None:
        try:
            await store.release(key, token)
        except (RedisError, OSError) as exc:
            log.warning("could not release Idempotency-Key %s: %s", key, exc)


def _whole(body: bytes) -> Message:
    return {"type": "http.request", "body": body, "more_body": False}


async def _read_body(receive: Receive) -> tuple[bytes, Message | None]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"", message
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), None
