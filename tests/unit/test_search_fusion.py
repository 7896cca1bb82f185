"""Hybrid search's fusion and fallbacks, on fake read-model queries and a fake embedder."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.knowledge.queries import Filters
from app.knowledge.search import RRF_K, Searcher
from infra.embeddings import EmbeddingSpec


class FakeQueries:
    def __init__(self, text: list[tuple[str, int]], near: list[tuple[str, int]]) -> None:
        self.text, self.near = text, near
        self.vector_calls: list[list[float]] = []

    async def text_hits(self, q: str, limit: int, filters: Filters) -> list[dict[str, Any]]:
        best: dict[str, dict[str, Any]] = {}
        for position, (doc, chunk) in enumerate(self.text):
            best.setdefault(
                doc, {"document_id": doc, "chunk_index": chunk, "rank": 1 / (1 + position)}
            )
        return list(best.values())[:limit]

    async def text_chunks(self, q: str, limit: int, filters: Filters) -> list[dict[str, Any]]:
        return [
            {"document_id": d, "chunk_index": c, "rank": 1 / (1 + i)}
            for i, (d, c) in enumerate(self.text[:limit])
        ]

    async def vector_chunks(
        self, vector: list[float], model: str, limit: int, filters: Filters, **_: Any
    ) -> list[dict[str, Any]]:
        self.vector_calls.append(vector)
        return [
            {"document_id": d, "chunk_index": c, "distance": 0.1 * (1 + i)}
            for i, (d, c) in enumerate(self.near[:limit])
        ]

    async def chunk_details(
        self, q: str, keys: list[tuple[str, int]]
    ) -> dict[tuple[str, int], dict[str, Any]]:
        return {
            k: {
                "document_id": k[0],
                "chunk_index": k[1],
                "version": 1,
                "title": k[0].upper(),
                "start": 0,
                "end": 10,
                "snippet": "...",
            }
            for k in keys
        }


class FakeEmbedder:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec("fake", 3, True)

    def embed(self, texts: Any) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise RuntimeError("down")
        return np.ones((len(texts), 3), np.float32)


def searcher(queries: FakeQueries, embedder: FakeEmbedder | None) -> Searcher:
    return Searcher(queries, embedder, candidates=10, ef_search=40)  # type: ignore[arg-type]


async def test_a_chunk_found_by_both_modes_outranks_the_first_of_either() -> None:
    queries = FakeQueries(text=[("a", 0), ("b", 0)], near=[("c", 0), ("b", 0)])
    answer = await searcher(queries, FakeEmbedder()).search("q", "hybrid", 10, Filters())
    ranked = [(r["document_id"], r["rank"]) for r in answer["results"]]
    assert [d for d, _ in ranked] == ["b", "a", "c"]
    assert ranked[0][1] == pytest.approx(2 / (RRF_K + 2))
    b = answer["results"][0]["scores"]
    assert b["text"] is not None
    assert b["vector"] == pytest.approx(0.8)
    assert answer["results"][1]["scores"]["vector"] is None


async def test_each_document_appears_once_with_its_best_chunk() -> None:
    queries = FakeQueries(text=[], near=[("a", 3), ("a", 1), ("b", 0)])
    answer = await searcher(queries, FakeEmbedder()).search("q", "vector", 10, Filters())
    assert [(r["document_id"], r["chunk_index"]) for r in answer["results"]] == [
        ("a", 3),
        ("b", 0),
    ]


async def test_the_query_is_embedded_once_for_repeated_searches() -> None:
    embedder = FakeEmbedder()
    s = searcher(FakeQueries([], [("a", 0)]), embedder)
    for _ in range(3):
        await s.search("same question", "vector", 5, Filters())
    assert embedder.calls == 1


@pytest.mark.parametrize(
    ("embedder", "reason"),
    [(None, "UAIT_EMBEDDER=none"), (FakeEmbedder(fail=True), "the embedder failed")],
)
async def test_without_a_working_embedder_it_answers_in_text_mode_and_says_so(
    embedder: FakeEmbedder | None, reason: str
) -> None:
    queries = FakeQueries(text=[("a", 0)], near=[("z", 0)])
    answer = await searcher(queries, embedder).search("q", "hybrid", 10, Filters())
    assert answer["mode"] == "text"
    assert reason in answer["fallback"]
    assert [r["document_id"] for r in answer["results"]] == ["a"]
    assert queries.vector_calls == []


def test_filters_become_sql_on_the_table_named() -> None:
    where, params = Filters(source="s", tags=("x", "y"), documents=("d",)).sql("v")
    assert where == (
        " AND v.source = %(f_source)s AND v.tags @> %(f_tags)s"
        " AND v.document_id = ANY(%(f_documents)s)"
    )
    assert params == {"f_source": "s", "f_tags": ["x", "y"], "f_documents": ["d"]}
    assert Filters().sql("d") == ("", {})
