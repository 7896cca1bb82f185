"""The vectors of a version's chunks, embedded in batches that fill across a batch's documents."""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.knowledge.events import ChunkVectors
from infra.embeddings import pack
from workers.jobs import TransientCommandError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from infra.embeddings import Embedder
    from workers.knowledge.chunking import Span

# Past this many remembered vectors, start again. They are kept across batches, so a batch
# that conflicts and is retried in halves does not embed its chunks twice.
_MEMO_LIMIT = 20_000


class ChunkEmbedder:
    """Embeds chunks (title, newline, text), remembering the vectors a batch embedded ahead."""

    def __init__(self, embedder: Embedder | None) -> None:
        self.embedder = embedder
        self._memo: dict[str, np.ndarray] = {}

    @staticmethod
    def inputs(title: str, text: str, spans: Sequence[Span]) -> list[str]:
        """What is embedded for each chunk: the title gives a later chunk its subject."""
        head = f"{title}\n" if title else ""
        return [head + text[s.start : s.end] for s in spans]

    def warm(self, inputs: Sequence[str]) -> None:
        """Embed in one call every input not remembered yet."""
        if self.embedder is None:
            return
        if len(self._memo) > _MEMO_LIMIT:
            self._memo.clear()
        missing = list(dict.fromkeys(i for i in inputs if i not in self._memo))
        if not missing:
            return
        rows = self.embedder.embed(missing)
        self._memo.update(zip(missing, rows, strict=True))

    def vectors(self, title: str, text: str, spans: Sequence[Span]) -> ChunkVectors:
        """The chunks' vectors for an event; a failing embedder sends the command to retry."""
        import numpy as np

        assert self.embedder is not None
        inputs = self.inputs(title, text, spans)
        try:
            self.warm(inputs)
        except Exception as exc:
            raise TransientCommandError(f"the embedder failed: {exc!r}") from exc
        spec = self.embedder.spec
        rows = (
            np.stack([self._memo[i] for i in inputs])
            if inputs
            else np.zeros((0, spec.dim), np.float32)
        )
        return ChunkVectors(
            model=spec.model, dim=spec.dim, normalized=spec.normalized, vectors=pack(rows)
        )
