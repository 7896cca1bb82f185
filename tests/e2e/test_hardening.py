"""Request hardening on the running ingress: refused bodies, security headers, the docs page."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import httpx

pytestmark = pytest.mark.e2e

DOCUMENTS = "/v1/knowledge/documents"


def test_the_ingress_refuses_deep_json_and_non_json_bodies_before_the_route(
    api: httpx.Client,
) -> None:
    deep = b'{"title": "t", "text": "x", "tags": ' + b"[" * 40 + b"]" * 40 + b"}"
    too_deep = api.post(DOCUMENTS, content=deep, headers={"content-type": "application/json"})
    form = api.post(DOCUMENTS, content=b"title=t&text=x", headers={"content-type": "text/plain"})
    assert too_deep.status_code == 400
    assert too_deep.json()["type"] == "urn:uait:problem:json-too-complex"
    assert form.status_code == 415
    assert form.headers["content-type"] == "application/problem+json"


def test_api_answers_carry_the_security_headers_without_hsts_over_plain_http(
    api: httpx.Client,
) -> None:
    for response in (api.get("/livez"), api.get(f"{DOCUMENTS}/no-such-doc")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert "strict-transport-security" not in response.headers


def test_the_docs_page_still_serves_with_a_csp_for_its_cdn(api: httpx.Client) -> None:
    docs = api.get("/docs")
    spec = api.get("/openapi.json")
    assert docs.status_code == 200
    assert "swagger-ui-bundle.js" in docs.text
    assert "script-src https://cdn.jsdelivr.net 'sha256-" in docs.headers["content-security-policy"]
    assert spec.status_code == 200
    assert "Problem" in spec.json()["components"]["schemas"]
