"""Vector and hybrid search end to end, with the real all-MiniLM-L6-v2: the worker embeds the
chunks into the events, the projection indexes them in pgvector, the ingress embeds the query."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e.fixtures import IngressStarter

pytestmark = pytest.mark.e2e

DOCUMENTS = "/v1/knowledge/documents"
SEARCH = "/v1/knowledge/search"
WAIT = {"Prefer": "wait=30"}

BREAD = (
    "Sourdough",
    "Mix flour, water and a starter, let the dough rise overnight, then put it in a hot oven"
    " until the crust turns golden brown.",
)
TAXES = (
    "Annual filing",
    "Submit your yearly income return to the revenue agency before the April deadline to"
    " avoid penalties and interest.",
)
RUNNING = (
    "Marathon training",
    "Run long distances on weekends, increase your weekly mileage slowly, and rest enough to"
    " prevent injuries before race day.",
)
# Not one word in common with BREAD's title or text (its other words are stop words).
QUERY = "how do I make bread at home"


def ingest(api: httpx.Client, **body: Any) -> int:
    response = api.post(DOCUMENTS, json=body, headers=WAIT)
    assert response.status_code == 201, response.text
    position: int = response.json()["position"]
    return position


def search(api: httpx.Client, **params: Any) -> dict[str, Any]:
    response = api.get(SEARCH, params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture
def corpus(api: httpx.Client) -> tuple[str, dict[str, str], int]:
    """Three documents under a source of their own: (source, id by topic, last position)."""
    source = f"search-{uuid.uuid4().hex[:8]}"
    ids = {}
    position = 0
    for topic, (title, text), tag in (
        ("bread", BREAD, "food"),
        ("taxes", TAXES, "money"),
        ("running", RUNNING, "sport"),
    ):
        ids[topic] = f"{topic}-{uuid.uuid4().hex[:8]}"
        position = ingest(
            api, document_id=ids[topic], title=title, text=text, source=source, tags=[tag]
        )
    return source, ids, position


def test_a_query_finds_the_document_that_shares_no_word_with_it(
    api: httpx.Client, corpus: tuple[str, dict[str, str], int]
) -> None:
    source, ids, position = corpus
    text = search(api, q=QUERY, mode="text", source=source, after=position)
    assert text["mode"] == "text"
    assert ids["bread"] not in [r["document_id"] for r in text["results"]]

    vector = search(api, q=QUERY, mode="vector", source=source, after=position)
    assert vector["mode"] == "vector"
    assert "fallback" not in vector
    hits = vector["results"]
    assert hits[0]["document_id"] == ids["bread"]
    assert len(hits) == 3  # every match, ranked
    best = hits[0]
    # Its citation and its scores.
    assert (best["version"], best["chunk_index"], best["start"]) == (1, 0, 0)
    assert best["end"] == len(BREAD[1])
    assert best["title"] == BREAD[0]
    assert best["scores"]["vector"] > 0.3 > hits[1]["scores"]["vector"]
    assert best["rank"] == best["scores"]["vector"]

    hybrid = search(api, q=QUERY, source=source, after=position)  # hybrid is the default
    assert hybrid["mode"] == "hybrid"
    assert hybrid["results"][0]["document_id"] == ids["bread"]
    assert hybrid["results"][0]["scores"]["fused"] > 0
    assert hybrid["results"][0]["scores"]["text"] is None  # found by its vector only


def test_a_hybrid_hit_found_both_ways_ranks_first(
    api: httpx.Client, corpus: tuple[str, dict[str, str], int]
) -> None:
    source, ids, position = corpus
    answer = search(api, q="weekly mileage for a race", source=source, after=position)
    first = answer["results"][0]
    assert first["document_id"] == ids["running"]
    assert first["scores"]["text"] > 0
    assert first["scores"]["vector"] > 0
    assert "<mark>" in first["snippet"]


@pytest.mark.parametrize("mode", ["vector", "hybrid"])
def test_filters_narrow_the_hits_and_a_filtered_search_returns_every_match(
    api: httpx.Client, corpus: tuple[str, dict[str, str], int], mode: str
) -> None:
    source, ids, position = corpus
    by_tag = search(api, q=QUERY, mode=mode, source=source, tag="money", after=position)
    assert [r["document_id"] for r in by_tag["results"]] == [ids["taxes"]]
    by_id = search(
        api,
        q=QUERY,
        mode=mode,
        document_id=[ids["running"], ids["taxes"]],
        after=position,
    )
    assert sorted(r["document_id"] for r in by_id["results"]) == sorted(
        [ids["running"], ids["taxes"]]
    )
    # The whole corpus of the suite is far larger; the filter still yields its 2 best of 3.
    two = search(api, q=QUERY, mode=mode, source=source, limit=2, after=position)
    assert len(two["results"]) == 2
    assert two["results"][0]["document_id"] == ids["bread"]
    none = search(api, q=QUERY, mode=mode, source=f"{source}-other", after=position)
    assert none["results"] == []


def test_a_bad_mode_is_refused(api: httpx.Client) -> None:
    response = api.get(SEARCH, params={"q": "x", "mode": "semantic"})
    assert response.status_code == 422
    assert response.headers["content-type"].startswith("application/problem+json")


def test_without_an_embedder_search_answers_in_text_mode_and_says_so(
    api: httpx.Client,
    corpus: tuple[str, dict[str, str], int],
    start_ingress: IngressStarter,
) -> None:
    source, ids, position = corpus
    ingress = start_ingress(UAIT_EMBEDDER="none")
    with httpx.Client(base_url=ingress.base_url, headers=dict(api.headers), timeout=30) as plain:
        answer = search(plain, q="revenue agency", source=source, after=position)
    assert answer["mode"] == "text"
    assert "UAIT_EMBEDDER=none" in answer["fallback"]
    assert [r["document_id"] for r in answer["results"]] == [ids["taxes"]]
    assert answer["results"][0]["scores"] == {"text": answer["results"][0]["rank"]}
