from __future__ import annotations

import itertools
import random

import pytest

from workers.knowledge.chunking import chunk_spans

PARAS = [
    "Kafka keeps per-partition order. Keys decide partitions.",
    "The event store is append-only; projections can be rebuilt at any time.",
    "Chunks overlap a little so that a sentence cut at a boundary is still found by search.",
]


def texts(spans, text):
    return [text[s.start : s.end] for s in spans]


def test_a_short_text_is_one_chunk_equal_to_the_trimmed_text():
    text = "  \n hello world \n\n"
    assert texts(chunk_spans(text, 100, 10), text) == ["hello world"]


def test_a_blank_text_has_no_chunks():
    assert chunk_spans(" \n\n \t", 100, 10) == []


def test_paragraphs_that_fit_are_packed_together_and_never_split():
    text = "\n\n".join(PARAS)
    spans = chunk_spans(text, 140, 0)
    chunks = texts(spans, text)
    # the first two paragraphs fit in 140 characters together, the third does not
    assert chunks[0] == PARAS[0] + "\n\n" + PARAS[1]
    assert chunks[1] == PARAS[2]


def test_a_long_paragraph_is_split_at_sentence_ends_first():
    sentence = "This sentence has exactly forty chars. "
    text = (sentence * 10).strip()
    for chunk in texts(chunk_spans(text, 100, 0), text):
        assert chunk.endswith(".")
        assert len(chunk) <= 100


def test_a_word_longer_than_the_size_is_cut_hard():
    text = "x" * 250
    chunks = texts(chunk_spans(text, 100, 10), text)
    assert "".join(chunks) == text
    assert all(len(c) <= 100 for c in chunks)
    assert len(chunks) == 3


def test_neighbouring_chunks_overlap_at_a_word_boundary():
    words = " ".join(f"w{i:03d}" for i in range(300))
    spans = chunk_spans(words, 200, 40)
    assert len(spans) > 3
    for a, b in itertools.pairwise(spans):
        assert b.start < a.end, "chunks should overlap"
        assert a.end - b.start <= 40
        assert words[b.start - 1] == " "


@pytest.mark.parametrize("seed", range(25))
def test_chunks_cover_every_word_respect_the_size_and_never_edge_on_whitespace(seed):
    rng = random.Random(seed)
    vocab = ["alpha", "beta.", "gamma!", "delta", "\n\n", "epsilon?", "z" * 70, "\n"]
    text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 600)))
    size, overlap = rng.choice([(64, 0), (100, 20), (300, 60), (1200, 150)])
    spans = chunk_spans(text, size, overlap)
    covered = [False] * len(text)
    last_start = -1
    for s in spans:
        assert 0 < s.end - s.start <= size
        assert not text[s.start].isspace()
        assert not text[s.end - 1].isspace()
        assert s.start > last_start, "chunks must advance"
        last_start = s.start
        for k in range(s.start, s.end):
            covered[k] = True
    assert all(covered[k] for k, ch in enumerate(text) if not ch.isspace())


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        chunk_spans("x", 10, 10)
