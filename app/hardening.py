"""Request hardening: JSON shape limits, the content type of bodies, security headers, CORS.

``JsonBodyGuard`` sits inside the body size limit, so what it scans is already bounded; it refuses
a body that is not JSON (415) or nests deeper or holds more items than a legitimate request ever
does (400) before anything parses it. ``SecurityHeaders`` sits outside everything else, so every
answer (the 413s, 429s and 503s of other middlewares too) carries the headers.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import TYPE_CHECKING

from starlette.middleware.cors import CORSMiddleware

from app.asgi import replay as _replay
from app.asgi import send_problem
from app.clientip import in_networks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fastapi import FastAPI
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from app.clientip import Network
    from infra.settings import Settings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

# A JSON string (escapes included; an unterminated one runs to the end), or one structural byte.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*(?:"|\Z)|[\[\]{},]', re.DOTALL)


def json_shape_error(body: bytes, max_depth: int, max_items: int) -> str | None:
    """Why ``body`` is too deep or too wide for the limits, or None.

    Scans the raw bytes (strings are skipped whole by the regex engine) and stops at the first
    violation, so the work is bounded by the body size and never builds any object. Malformed
    JSON is not judged here: the parser refuses it afterwards.
    """
    # Counting bytes is C speed, and a body with fewer openers than the depth limit (or fewer
    # commas than the item limit) cannot exceed it: most bodies need no scan.
    if body.count(b"[") + body.count(b"{") <= max_depth and body.count(b",") < max_items:
        return None
    depth = 0
    items: list[int] = []  # commas seen in each open container
    for match in _TOKENS.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > max_depth:
                return f"JSON nested deeper than {max_depth} levels"
            items.append(0)
        elif token in (b"]", b"}"):
            depth = max(depth - 1, 0)
            if items:
                items.pop()
        elif token == b"," and items:
            items[-1] += 1  # n commas separate n + 1 items
            if items[-1] + 1 > max_items:
                return f"a JSON array or object with more than {max_items} items"
    return None


def media_type(content_type: str | None) -> str:
    """``Application/JSON; charset=utf-8`` -> ``application/json`` ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _media_type(headers: dict[bytes, bytes]) -> str:
    return media_type(headers.get(b"content-type", b"").decode("latin-1"))


def is_json_media_type(media_type: str) -> bool:
    """``application/json`` or a structured ``+json`` type (``application/merge-patch+json``)."""
    if media_type == "application/json":
        return True
    main, _, sub = media_type.partition("/")
    return main == "application" and sub.endswith("+json")


class JsonBodyGuard:
    """ASGI middleware: 415 for a body that is not JSON, 400 for a JSON shape over the limits.

    Only requests that carry a body (POST, PUT and PATCH with a non-zero Content-Length or a
    chunked body) are checked; a bodyless POST (e.g. ``.../open`` of a breaker) passes.
    """

    def __init__(self, app: ASGIApp, *, max_depth: int, max_items: int) -> None:
        self.app = app
        self.max_depth = max_depth
        self.max_items = max_items

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        has_body = (
            length.strip() not in (b"", b"0")
            if length is not None
            else b"transfer-encoding" in headers
        )
        if not has_body:
            await self.app(scope, receive, send)
            return
        media_type = _media_type(headers)
        if not is_json_media_type(media_type):
            await send_problem(
                send,
                415,
                "Unsupported media type",
                f"request bodies must be application/json, not {media_type or 'untyped'}",
                "urn:uait:problem:unsupported-media-type",
                {"Accept-Post": "application/json"},
                scope["path"],
            )
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message]), send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        error = json_shape_error(body, self.max_depth, self.max_items)
        if error is not None:
            await send_problem(
                send,
                400,
                "JSON too complex",
                error,
                "urn:uait:problem:json-too-complex",
                {},
                scope["path"],
            )
            return
        whole: Message = {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, _replay([whole], then=receive), send)


# Every answer that is not a docs page: nothing may be loaded, framed or run from it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# FastAPI's Swagger UI and ReDoc pages load their code and styles from jsDelivr, ReDoc its fonts
# from Google Fonts, both a favicon from fastapi.tiangolo.com; they fetch /openapi.json (and
# "Try it out" calls the API) from this origin. Inline scripts are allowed by their hash only.
DOCS_SCRIPT_ORIGINS = ("https://cdn.jsdelivr.net",)
DOCS_STYLE_ORIGINS = ("https://cdn.jsdelivr.net", "https://fonts.googleapis.com")
DOCS_FONT_ORIGINS = ("https://fonts.gstatic.com",)
DOCS_IMG_ORIGINS = ("https://fastapi.tiangolo.com", "https://cdn.jsdelivr.net")
HSTS = "max-age=63072000; includeSubDomains"

_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script>", re.DOTALL | re.I)


def docs_csp(html: bytes) -> str:
    """The CSP of a docs page: the CDN origins above and the hashes of its inline scripts."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode() + "'"
        for m in _INLINE_SCRIPT.finditer(html)
    ]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join([*DOCS_SCRIPT_ORIGINS, *hashes]),
            # Swagger UI and ReDoc set style attributes at run time.
            "style-src " + " ".join([*DOCS_STYLE_ORIGINS, "'unsafe-inline'"]),
            "font-src " + " ".join(DOCS_FONT_ORIGINS),
            "img-src 'self' data: " + " ".join(DOCS_IMG_ORIGINS),
            "connect-src 'self'",
            "worker-src blob:",  # ReDoc's search runs in a worker made from a blob
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


def came_over_tls(scope: Scope, trusted_proxies: Sequence[Network]) -> bool:
    """HTTPS to this process, or ``X-Forwarded-Proto: https`` from a trusted proxy."""
    if scope.get("scheme") in ("https", "wss"):
        return True
    client = scope.get("client")
    if not client or not trusted_proxies or not in_networks(client[0], trusted_proxies):
        return False
    values = [v.decode("latin-1") for k, v in scope["headers"] if k == b"x-forwarded-proto"]
    protos = [p.strip().lower() for line in values for p in line.split(",") if p.strip()]
    # The right-most value is the one our own (trusted) proxy set.
    return bool(protos) and protos[-1] == "https"


class SecurityHeaders:
    """ASGI middleware: nosniff, no referrer, no framing and a CSP on every answer; HSTS over TLS.

    A header the app set itself is kept. The docs pages (``docs_paths``) get ``docs_csp``.
    """

    def __init__(
        self, app: ASGIApp, *, trusted_proxies: Sequence[Network], docs_paths: Sequence[str]
    ) -> None:
        self.app = app
        self.trusted = tuple(trusted_proxies)
        self.docs_paths = frozenset(docs_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fixed = [
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]
        if came_over_tls(scope, self.trusted):
            fixed.append((b"strict-transport-security", HSTS.encode()))

        def with_headers(message: Message, csp: str) -> Message:
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in fixed if k not in present]
            if b"content-security-policy" not in present:
                extra.append((b"content-security-policy", csp.encode()))
            return {**message, "headers": [*message.get("headers", []), *extra]}

        if scope["path"] not in self.docs_paths:

            async def api_send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message = with_headers(message, API_CSP)
                await send(message)

            await self.app(scope, receive, api_send)
            return

        # A docs page is small: hold it back to hash its inline scripts into the CSP.
        start: Message | None = None
        body: list[bytes] = []

        async def docs_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] == "http.response.body" and start is not None:
                body.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                html = b"".join(body)
                await send(with_headers(start, docs_csp(html)))
                await send({"type": "http.response.body", "body": html})
                return
            await send(message)

        await self.app(scope, receive, docs_send)


# What a browser on an allowed origin may send and read.
CORS_METHODS = ("GET", "POST", "DELETE")
CORS_REQUEST_HEADERS = (
    "Content-Type",
    "Idempotency-Key",
    "Prefer",
    "Last-Event-ID",
    "traceparent",
    "tracestate",
)
CORS_EXPOSED_HEADERS = (
    "Location",
    "Retry-After",
    "Preference-Applied",
    "Idempotent-Replayed",
    "RateLimit",
    "RateLimit-Policy",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
)


def install_cors(app: FastAPI, settings: Settings) -> None:
    """Starlette's CORS middleware for the explicit allow-list; none without one.

    Starlette answers only a listed origin, with that origin (never ``*``: the settings refuse a
    wildcard); a preflight from any other origin gets 400 without Access-Control-Allow-Origin.
    """
    origins = settings.cors_origin_list
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_credentials=settings.cors_allow_credentials,
        allow_methods=list(CORS_METHODS),
        allow_headers=list(CORS_REQUEST_HEADERS),
        expose_headers=list(CORS_EXPOSED_HEADERS),
        max_age=600,
    )


def install_security_headers(app: FastAPI, settings: Settings) -> None:
    docs = [app.docs_url, app.redoc_url]
    if app.docs_url and app.swagger_ui_oauth2_redirect_url:
        docs.append(app.swagger_ui_oauth2_redirect_url)
    app.add_middleware(
        SecurityHeaders,
        trusted_proxies=settings.trusted_proxy_networks,
        docs_paths=[p for p in docs if p],
    )
