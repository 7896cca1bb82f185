"""Search over the knowledge base: full-text, vector, and hybrid (both, fused by reciprocal rank).

The query is embedded here, at the ingress (a read, not a command), by the same embedder that
embedded the chunks, with a small in-process cache of recent queries. When the embedder is
missing or fails, a vector or hybrid search answers in text mode and says so (``fallback``).
Every hit cites its chunk (document, version, chunk index, character offsets) and carries the
scores that ranked it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from app.knowledge.queries import DocumentQueries, Filters
    from infra.embeddings import Embedder

log = logging.getLogger("uait.knowledge")

Mode = Literal["hybrid", "vector", "text"]
RRF_K = 60
"""Reciprocal-rank fusion's constant (Cormack et al. 2009): a hit ranked r adds 1/(60 + r)."""


class Searcher:
    def __init__(
        self,
        queries: DocumentQueries,
        embedder: Embedder | None,
        *,
        candidates: int,
        ef_search: int,
        cached_queries: int = 1024,
    ) -> None:
        self.queries = queries
        self.embedder = embedder
        self.candidates = candidates
        self.ef_search = ef_search
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._cached_queries = cached_queries

    async def query_vector(self, q: str) -> list[float]:
        vector = self._vectors.get(q)
        if vector is not None:
            self._vectors.move_to_end(q)
            return vector
        assert self.embedder is not None
        rows = await asyncio.to_thread(self.embedder.embed, [q])
        vector = [float(x) for x in rows[0]]
        self._vectors[q] = vector
        if len(self._vectors) > self._cached_queries:
            self._vectors.popitem(last=False)
        return vector

    async def search(self, q: str, mode: Mode, limit: int, filters: Filters) -> dict[str, Any]:
        """``{"query", "mode", "results", "fallback"?}``: ``mode`` is the mode that answered."""
        answer: dict[str, Any] = {"query": q, "mode": mode}
        vector: list[float] | None = None
        if mode != "text":
            if self.embedder is None:
                answer["fallback"] = "no embedder is configured (UAIT_EMBEDDER=none): text mode"
            else:
                try:
                    vector = await self.query_vector(q)
                except Exception as exc:
                    log.warning("embedding a query failed; answering in text mode", exc_info=True)
                    answer["fallback"] = f"the embedder failed ({type(exc).__name__}): text mode"
            if vector is None:
                mode = answer["mode"] = "text"
        if mode == "text":
            ranked = [
                ((h["document_id"], h["chunk_index"]), {"text": h["rank"]}, h["rank"])
                for h in await self.queries.text_hits(q, limit, filters)
            ]
        else:
            assert vector is not None
            ranked = await self._ranked(q, vector, mode, limit, filters)
        details = await self.queries.chunk_details(q, [key for key, _, _ in ranked])
        results = []
        for key, scores, rank in ranked:
            chunk = details.get(key)
            if chunk is None:  # deleted between the two reads
                continue
            results.append(
                {
                    "document_id": chunk["document_id"],
                    "title": chunk["title"],
                    "version": chunk["version"],
                    "chunk_index": chunk["chunk_index"],
                    "start": chunk["start"],
                    "end": chunk["end"],
                    "rank": rank,
                    "scores": scores,
                    "snippet": chunk["snippet"],
                }
            )
        answer["results"] = results
        return answer

    async def _ranked(
        self, q: str, vector: list[float], mode: Mode, limit: int, filters: Filters
    ) -> list[tuple[tuple[str, int], dict[str, float | None], float]]:
        """The best chunk of each of the ``limit`` best documents, with its scores."""
        assert self.embedder is not None
        model = self.embedder.spec.model
        n = max(self.candidates, 3 * limit)
        if mode == "vector":
            near = await self.queries.vector_chunks(
                vector, model, n, filters, ef_search=self.ef_search
            )
            scored = {
                (h["document_id"], h["chunk_index"]): {"vector": 1.0 - h["distance"]} for h in near
            }
            order = [(key, s, float(s["vector"])) for key, s in scored.items()]
        else:
            text, near = await asyncio.gather(
                self.queries.text_chunks(q, n, filters),
                self.queries.vector_chunks(vector, model, n, filters, ef_search=self.ef_search),
            )
            fused: dict[tuple[str, int], dict[str, float | None]] = {}
            for position, h in enumerate(text, 1):
                s = fused.setdefault(
                    (h["document_id"], h["chunk_index"]), {"text": None, "vector": None}
                )
                s["text"] = h["rank"]
                s["fused"] = (s.get("fused") or 0.0) + 1.0 / (RRF_K + position)
            for position, h in enumerate(near, 1):
                s = fused.setdefault(
                    (h["document_id"], h["chunk_index"]), {"text": None, "vector": None}
                )
                s["vector"] = 1.0 - h["distance"]
                s["fused"] = (s.get("fused") or 0.0) + 1.0 / (RRF_K + position)
            order = [(key, s, float(s["fused"] or 0.0)) for key, s in fused.items()]
        order.sort(key=lambda item: (-item[2], item[0]))
        best: dict[str, tuple[tuple[str, int], dict[str, float | None], float]] = {}
        for item in order:
            best.setdefault(item[0][0], item)
        return list(best.values())[:limit]
