"""Request hardening (app/hardening.py) on a small app: JSON limits, content type, headers, CORS."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from app.hardening import (
    API_CSP,
    JsonBodyGuard,
    install_cors,
    install_security_headers,
    json_shape_error,
)
from infra.settings import Settings

ALLOWED = "https://app.example.com"
PROXY = "10.0.0.2"


def make_app(**settings: object) -> FastAPI:
    s = Settings(**settings)  # type: ignore[arg-type]
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(body: dict[str, object]) -> dict[str, object]:
        return {"keys": len(body)}

    @app.post("/v1/bare")
    async def bare() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/v1/thing")
    async def thing() -> dict[str, str]:
        return {"ok": "yes"}

    app.add_middleware(JsonBodyGuard, max_depth=s.json_max_depth, max_items=s.json_max_items)
    install_cors(app, s)
    install_security_headers(app, s)
    return app


def client(app: FastAPI, peer: str = "192.0.2.7", scheme: str = "http") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 4321))
    return httpx.AsyncClient(transport=transport, base_url=f"{scheme}://testserver")


def nested(depth: int) -> bytes:
    return b'{"a":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


async def test_json_nested_deeper_than_the_limit_is_refused_with_a_400_problem() -> None:
    async with client(make_app()) as c:
        ok = await c.post(
            "/v1/echo", content=nested(32), headers={"content-type": "application/json"}
        )
        deep = await c.post(
            "/v1/echo", content=nested(33), headers={"content-type": "application/json"}
        )
    assert ok.status_code == 200
    assert deep.status_code == 400
    assert deep.headers["content-type"] == "application/problem+json"
    assert deep.json()["type"] == "urn:uait:problem:json-too-complex"
    assert "32" in deep.json()["detail"]


async def test_an_array_or_object_with_more_than_ten_thousand_items_is_refused() -> None:
    huge_array = b'{"a":[' + b",".join([b"1"] * 10_001) + b"]}"
    huge_object = b"{" + b",".join(b'"k%d":1' % i for i in range(10_001)) + b"}"
    just_fits = b'{"a":[' + b",".join([b"1"] * 10_000) + b"]}"
    headers = {"content-type": "application/json"}
    async with client(make_app()) as c:
        assert (await c.post("/v1/echo", content=huge_array, headers=headers)).status_code == 400
        assert (await c.post("/v1/echo", content=huge_object, headers=headers)).status_code == 400
        assert (await c.post("/v1/echo", content=just_fits, headers=headers)).status_code == 200


def test_brackets_and_commas_inside_strings_do_not_count() -> None:
    body = b'{"text": "[[[[[[[[[[ ,,,,,,,,, {{{{{ \\" [[[[", "b": [1, 2]}'
    assert json_shape_error(body, max_depth=3, max_items=3) is None
    assert json_shape_error(b"[[[[]]]]", max_depth=3, max_items=3) is not None
    assert json_shape_error(b"[1,2,3,4]", max_depth=3, max_items=3) is not None


async def test_a_body_that_is_not_application_json_is_refused_with_415() -> None:
    async with client(make_app()) as c:
        form = await c.post("/v1/echo", content=b"a=1", headers={"content-type": "text/plain"})
        untyped = await c.post("/v1/echo", content=b'{"a": 1}')
        charset = await c.post(
            "/v1/echo",
            content=b'{"a": 1}',
            headers={"content-type": "application/json; charset=utf-8"},
        )
        bodyless = await c.post("/v1/bare")
    assert form.status_code == 415
    assert form.headers["content-type"] == "application/problem+json"
    assert form.json()["status"] == 415
    assert untyped.status_code == 415
    assert charset.status_code == 200
    assert bodyless.status_code == 200


async def test_every_answer_has_the_security_headers_and_no_hsts_over_plain_http() -> None:
    async with client(make_app()) as c:
        answers = [
            await c.get("/v1/thing"),
            await c.get("/nowhere"),
            await c.post("/v1/echo", content=b"x", headers={"content-type": "text/plain"}),
        ]
    for response in answers:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["content-security-policy"] == API_CSP
        assert "strict-transport-security" not in response.headers


async def test_hsts_is_sent_over_https_and_for_a_trusted_proxys_forwarded_https_only() -> None:
    app = make_app(trusted_proxies="10.0.0.0/24")
    forwarded = {"x-forwarded-proto": "https"}
    async with client(app, scheme="https") as c:
        direct_tls = await c.get("/v1/thing")
    async with client(app, peer=PROXY) as c:
        via_proxy = await c.get("/v1/thing", headers=forwarded)
        proxy_plain = await c.get("/v1/thing", headers={"x-forwarded-proto": "http"})
    async with client(app, peer="192.0.2.7") as c:
        forged = await c.get("/v1/thing", headers=forwarded)
    assert "max-age=" in direct_tls.headers["strict-transport-security"]
    assert "max-age=" in via_proxy.headers["strict-transport-security"]
    assert "strict-transport-security" not in proxy_plain.headers
    assert "strict-transport-security" not in forged.headers


async def test_the_swagger_ui_gets_a_csp_allowing_its_cdn_and_its_inline_script_only() -> None:
    async with client(make_app()) as c:
        docs = await c.get("/docs")
    assert docs.status_code == 200
    assert "SwaggerUIBundle" in docs.text
    csp = docs.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"].split()[0] == "https://cdn.jsdelivr.net"
    assert "'sha256-" in directives["script-src"]
    assert "'unsafe-inline'" not in directives["script-src"]
    assert "https://cdn.jsdelivr.net" in directives["style-src"]
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"


async def test_a_cors_preflight_from_a_listed_origin_is_allowed() -> None:
    app = make_app(cors_origins=f"{ALLOWED}, https://other.example.org")
    async with client(app) as c:
        preflight = await c.options(
            "/v1/echo",
            headers={
                "origin": ALLOWED,
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type, idempotency-key",
            },
        )
        simple = await c.get("/v1/thing", headers={"origin": ALLOWED})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert simple.headers["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-credentials" not in simple.headers


async def test_a_cors_preflight_from_another_origin_gets_no_allow_origin_header() -> None:
    app = make_app(cors_origins=ALLOWED, cors_allow_credentials=True)
    evil = "https://evil.example.net"
    async with client(app) as c:
        preflight = await c.options(
            "/v1/echo", headers={"origin": evil, "access-control-request-method": "POST"}
        )
        simple = await c.get("/v1/thing", headers={"origin": evil})
        listed = await c.get("/v1/thing", headers={"origin": ALLOWED})
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers
    assert listed.headers["access-control-allow-origin"] == ALLOWED  # never "*"
    assert listed.headers["access-control-allow-credentials"] == "true"


async def test_without_configured_origins_no_cors_headers_are_sent() -> None:
    async with client(make_app()) as c:
        response = await c.get("/v1/thing", headers={"origin": ALLOWED})
    assert not [h for h in response.headers if h.startswith("access-control-")]


@pytest.mark.parametrize("origins", ["*", "https://*.example.com", "https://a.example/path", "x"])
def test_a_wildcard_or_malformed_cors_origin_is_refused_by_the_settings(origins: str) -> None:
    with pytest.raises(ValidationError):
        Settings(cors_origins=origins)
