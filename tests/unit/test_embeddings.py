"""The local embedder: the ONNX graph built from all-MiniLM-L6-v2's weights computes BERT, and its
vectors are sentence embeddings (the real packaged model, offline)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pytest

from infra.embeddings import MINILM, MiniLM, _load_weights, minilm_folder, pack, unpack

if TYPE_CHECKING:
    from pathlib import Path

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply after the announcement of new tariffs.",
    "short",
]


@pytest.fixture(scope="module")
def minilm() -> MiniLM:
    return MiniLM()


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * gamma + beta


def reference(minilm: MiniLM, text: str) -> np.ndarray:
    """BERT written out in numpy from the weights, one text at a time (no padding, no fusion)."""
    w = _load_weights(minilm_folder() / "model.safetensors")
    ids = np.array(minilm.tokenizer.encode(text).ids)
    n = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    erf = np.vectorize(math.erf)
    for i in range(6):
        p = f"encoder.layer.{i}."

        def dense(v: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            dense(x, f"attention.self.{n_}").reshape(n, 12, 32).transpose(1, 0, 2)
            for n_ in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(32)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attended = (scores @ v).transpose(1, 0, 2).reshape(n, 384)
        x = _layer_norm(
            dense(attended, "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
        )
        h = dense(x, "intermediate.dense")
        h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
        x = _layer_norm(
            dense(h, "output.dense") + x,
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
        )
    pooled = x.mean(0)
    return np.asarray(pooled / np.linalg.norm(pooled), dtype=np.float32)


def test_the_graph_computes_the_reference_forward_in_a_padded_batch(minilm: MiniLM) -> None:
    vectors = minilm.embed(TEXTS)  # padded to the longest: the mask must hide the padding
    assert vectors.shape == (len(TEXTS), 384)
    for text, vector in zip(TEXTS, vectors, strict=True):
        assert float(reference(minilm, text) @ vector) > 0.99999, text
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_related_sentences_are_near_and_unrelated_ones_far(minilm: MiniLM) -> None:
    a, b, c, _ = minilm.embed(TEXTS)
    assert float(a @ b) > 0.6
    assert float(a @ c) < 0.2
    assert minilm.spec.model == MINILM
    assert minilm.spec.dim == 384


def test_order_and_batch_size_do_not_change_a_vector(minilm: MiniLM) -> None:
    one = minilm.embed([TEXTS[2]])[0]
    batched = minilm.embed([*TEXTS, *TEXTS])[2]
    assert np.allclose(one, batched, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_vectors_travel_as_float16_and_come_back_within_its_precision(minilm: MiniLM) -> None:
    vectors = minilm.embed(TEXTS)
    packed = pack(vectors)
    assert len(packed) == math.ceil(len(TEXTS) * 384 * 2 / 3) * 4  # base64 of 2 bytes a value
    back = unpack(packed, 384)
    assert back.shape == vectors.shape
    assert np.max(np.abs(back - vectors)) < 1e-3
    with pytest.raises(ValueError, match="rows of 384"):
        unpack(pack(vectors[:, :100]), 384)


def test_int8_weights_are_built_once_and_stay_close_to_fp32(minilm: MiniLM, tmp_path: Path) -> None:
    int8 = MiniLM(precision="int8", cache_dir=tmp_path)
    assert int8.spec.model == f"{MINILM}@int8"
    (built,) = tmp_path.glob("minilm-int8-*.onnx")
    cosines = np.sum(int8.embed(TEXTS) * minilm.embed(TEXTS), axis=1)
    assert float(cosines.min()) > 0.97
    MiniLM(precision="int8", cache_dir=tmp_path)
    assert list(tmp_path.glob("minilm-int8-*.onnx")) == [built]
