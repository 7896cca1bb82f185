"""Importing a Gemma 3 GGUF into an mlx-lm folder: a tiny synthetic file written with gguf-py
for every run, and the real packaged Gemma 3 270M when that package is installed."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
mx = pytest.importorskip("mlx.core")

from workers.inference.gguf_import import (  # noqa: E402
    PACKAGE,
    GGUFImportError,
    find_packaged_gguf,
    hf_name,
    import_gguf,
)

if TYPE_CHECKING:
    from pathlib import Path

Q = gguf.GGMLQuantizationType
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS = 64, 2, 1, 32, 256, 6  # mlx-lm wants >= 6
SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
WORDS = ["\n", "  ", "\u2581", "a", "b", "c", "h", "i", "ab", "abc", "\u2581a", "hi", "\u2581hi"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
TOKENS = SPECIAL + WORDS + BYTES
TYPES = [3] * len(SPECIAL) + [4, 4] + [1] * (len(WORDS) - 2) + [6] * len(BYTES)
ID = {t: i for i, t in enumerate(TOKENS)}


def _tensors() -> dict[str, tuple[np.ndarray, Any]]:
    """GGUF name -> (the float values, how they are stored: a quantization type or None)."""
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    tensors = {"token_embd.weight": (w(len(TOKENS), HIDDEN), Q.Q8_0)}
    tensors["output_norm.weight"] = (w(HIDDEN), None)
    for n in range(LAYERS):
        tensors |= {
            f"blk.{n}.attn_q.weight": (w(HEADS * HEAD_DIM, HIDDEN), Q.Q8_0),
            f"blk.{n}.attn_k.weight": (w(KV_HEADS * HEAD_DIM, HIDDEN), Q.Q5_0),
            f"blk.{n}.attn_v.weight": (w(KV_HEADS * HEAD_DIM, HIDDEN), Q.Q8_0),
            f"blk.{n}.attn_output.weight": (w(HIDDEN, HEADS * HEAD_DIM), Q.F16),
            f"blk.{n}.ffn_gate.weight": (w(FFN, HIDDEN), Q.Q8_0),
            f"blk.{n}.ffn_up.weight": (w(FFN, HIDDEN), Q.Q8_0),
            f"blk.{n}.ffn_down.weight": (w(HIDDEN, FFN), Q.Q5_0),
        }
        for norm, size in [
            ("attn_norm", HIDDEN),
            ("attn_q_norm", HEAD_DIM),
            ("attn_k_norm", HEAD_DIM),
            ("post_attention_norm", HIDDEN),
            ("ffn_norm", HIDDEN),
            ("post_ffw_norm", HIDDEN),
        ]:
            tensors[f"blk.{n}.{norm}.weight"] = (w(size), None)
    return tensors


def _write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, Any]]) -> dict[str, np.ndarray]:
    """A gemma3 GGUF as llama.cpp writes one (norms stored as 1 + w); returns what it decodes to."""
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_context_length(2048)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(512)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(TOKENS)
    writer.add_token_scores([-float(i) for i in range(len(TOKENS))])
    writer.add_token_types(TYPES)
    writer.add_bos_token_id(ID["<bos>"])
    writer.add_eos_token_id(ID["<eos>"])
    writer.add_unk_token_id(ID["<unk>"])
    writer.add_pad_token_id(ID["<pad>"])
    writer.add_add_bos_token(True)
    decoded = {}
    for name, (values, qtype) in tensors.items():
        stored = values + 1.0 if name.endswith("norm.weight") else values
        if qtype is None:
            writer.add_tensor(name, stored)
            decoded[name] = stored
        else:
            data = gguf.quants.quantize(stored, qtype)
            writer.add_tensor(name, data, raw_dtype=qtype)
            decoded[name] = gguf.quants.dequantize(data, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return decoded


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("gguf")
    tensors = _tensors()
    decoded = _write_gguf(root / "tiny.gguf", tensors)
    calls: list[tuple[int, int, str]] = []
    folder = import_gguf(
        root / "tiny.gguf",
        root / "models" / "tiny",
        progress=lambda done, total, name: calls.append((done, total, name)),
    )
    return folder, {"tensors": tensors, "decoded": decoded, "calls": calls}


def test_every_tensor_gets_its_hugging_face_name_and_its_dequantized_values(
    imported: tuple[Path, dict[str, Any]],
) -> None:
    folder, facts = imported
    saved = mx.load(str(folder / "model.safetensors"))
    assert set(saved) == {hf_name(name) for name in facts["tensors"]}
    assert "model.layers.1.pre_feedforward_layernorm.weight" in saved
    assert hf_name("blk.1.ffn_norm.weight") == "model.layers.1.pre_feedforward_layernorm.weight"
    for name, (original, qtype) in facts["tensors"].items():
        got = np.array(saved[hf_name(name)])
        assert got.dtype == np.float32
        if name.endswith("norm.weight"):  # llama.cpp's 1 + w becomes mlx-lm's w again
            np.testing.assert_allclose(got, original, atol=1e-6)
        else:  # exactly what gguf-py decodes, and close to what was quantized
            np.testing.assert_array_equal(got, facts["decoded"][name])
            np.testing.assert_allclose(got, original, atol=0.01 if qtype == Q.Q5_0 else 0.002)


def test_the_config_comes_from_the_gemma3_metadata(imported: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = imported
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gemma3_text"
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (
        HIDDEN,
        LAYERS,
        FFN,
    )
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (HEADS, KV_HEADS)
    assert config["head_dim"] == config["query_pre_attn_scalar"] == HEAD_DIM
    assert config["rms_norm_eps"] == 1e-6
    assert config["rope_theta"] == 1_000_000.0
    assert (config["sliding_window"], config["sliding_window_pattern"]) == (512, 6)
    assert config["vocab_size"] == len(TOKENS)
    assert config["tie_word_embeddings"] is True
    assert config["eos_token_id"] == [ID["<eos>"], ID["<end_of_turn>"]]


def test_the_tokenizer_is_rebuilt_from_the_vocabulary_with_bos_and_gemma_turns(
    imported: tuple[Path, dict[str, Any]],
) -> None:
    from tokenizers import Tokenizer

    folder, _ = imported
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert tokenizer.encode("abc hi").ids == [ID["<bos>"], ID["abc"], ID["\u2581hi"]]
    # A GGUF spells its run-of-spaces tokens with real spaces; they still match.
    assert tokenizer.encode("a  b", add_special_tokens=False).ids == [ID["a"], ID["  "], ID["b"]]
    assert tokenizer.encode("é", add_special_tokens=False).ids == [ID["<0xC3>"], ID["<0xA9>"]]
    turn = tokenizer.encode("<start_of_turn>hi<end_of_turn>", add_special_tokens=False).ids
    assert turn == [ID["<start_of_turn>"], ID["hi"], ID["<end_of_turn>"]]
    assert tokenizer.decode(tokenizer.encode("hi abc é").ids) == "hi abc é"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["eos_token"], config["add_bos_token"]) == (
        "<bos>",
        "<eos>",
        True,
    )
    assert "<start_of_turn>" in config["chat_template"]


def test_progress_counts_every_tensor_then_the_files(imported: tuple[Path, dict[str, Any]]) -> None:
    _, facts = imported
    calls = facts["calls"]
    total = len(facts["tensors"]) + 2
    assert [done for done, _, _ in calls] == list(range(1, total + 1))
    assert {t for _, t, _ in calls} == {total}
    assert {name for _, _, name in calls[:-2]} == set(facts["tensors"])
    assert [name for _, _, name in calls[-2:]] == ["tokenizer.json", "model.safetensors"]


def test_the_folder_appears_whole_and_is_never_overwritten(
    imported: tuple[Path, dict[str, Any]],
) -> None:
    folder, _ = imported
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp dir left
    with pytest.raises(FileExistsError):
        import_gguf(folder.parent.parent / "tiny.gguf", folder)


def test_mlx_lm_loads_and_runs_the_imported_folder(imported: tuple[Path, dict[str, Any]]) -> None:
    from mlx_lm import generate, load

    folder, _ = imported
    model, tokenizer = load(str(folder))[:2]
    assert tokenizer.eos_token_ids == {ID["<eos>"], ID["<end_of_turn>"]}
    prompt = tokenizer.apply_chat_template(  # type: ignore[no-untyped-call]
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n"
    assert isinstance(generate(model, tokenizer, "abc", max_tokens=3), str)


def test_a_quantized_import_is_4_bit_in_groups_of_64(tmp_path: Path) -> None:
    _write_gguf(tmp_path / "tiny.gguf", _tensors())
    folder = import_gguf(tmp_path / "tiny.gguf", tmp_path / "q", quantize=True, dtype="bfloat16")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4, "mode": "affine"}
    saved = mx.load(str(folder / "model.safetensors"))
    assert saved["model.layers.0.mlp.up_proj.weight"].dtype == mx.uint32
    assert saved["model.layers.0.mlp.up_proj.scales"].dtype == mx.bfloat16


def test_a_gguf_of_another_architecture_is_refused(tmp_path: Path) -> None:
    writer = gguf.GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    writer.add_token_list(TOKENS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GGUFImportError, match="llama"):
        import_gguf(tmp_path / "llama.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(GGUFImportError):
        hf_name("v.blk.0.attn_q.weight")


def test_the_packaged_gguf_is_joined_from_its_chunks_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = PACKAGE.replace("-", "_")
    site = tmp_path / "site"
    chunks = [site / "data" / f"part{i}" for i in range(3)]
    for i, chunk in enumerate(chunks):
        chunk.parent.mkdir(parents=True, exist_ok=True)
        chunk.write_bytes(bytes([i]) * 1000)
    joined = b"".join(c.read_bytes() for c in chunks)
    (site / module).mkdir()
    (site / module / "__init__.py").write_text(
        f"from pathlib import Path\n"
        f"MODEL_NAME = 'model.gguf'\n"
        f"EXPECTED_SHA256 = {hashlib.sha256(joined).hexdigest()!r}\n"
        f"def chunk_paths():\n    return [Path(p) for p in {[str(c) for c in chunks]!r}]\n"
        f"def default_output_path():\n    return Path({str(tmp_path / 'default')!r}) / MODEL_NAME\n"
    )
    info = site / f"{module}-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 1.0.0\n")
    monkeypatch.syspath_prepend(str(site))
    real = sys.modules.pop(module, None)
    try:
        _check_joining(tmp_path, chunks, joined)
    finally:  # the real package again for the tests after this one
        sys.modules.pop(module, None)
        if real is not None:
            sys.modules[module] = real


def _check_joining(tmp_path: Path, chunks: list[Path], joined: bytes) -> None:
    found = find_packaged_gguf(tmp_path / "cache")
    assert found == tmp_path / "cache" / "model.gguf"
    assert found.read_bytes() == joined
    assert [p.name for p in found.parent.iterdir()] == ["model.gguf"]
    chunks[0].write_bytes(b"changed!" * 125)  # same size: a complete file is not joined again
    assert find_packaged_gguf(tmp_path / "cache") == found
    assert found.read_bytes() == joined
    with pytest.raises(GGUFImportError):
        find_packaged_gguf(tmp_path / "elsewhere")
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_without_the_package_there_is_no_packaged_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert find_packaged_gguf() is None


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec(PACKAGE.replace("-", "_")) is None,
    reason=f"{PACKAGE} (228 MB) is not installed",
)
def test_the_real_gemma_3_270m_knows_the_capital_of_france(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from mlx_lm import generate, load
    from mlx_lm.sample_utils import make_sampler

    root = tmp_path_factory.mktemp("gemma")
    gguf_path = find_packaged_gguf(root)
    assert gguf_path is not None
    folder = import_gguf(gguf_path, root / "gemma-3-270m", dtype="bfloat16")
    model, tokenizer = load(str(folder))[:2]
    answer = generate(
        model,
        tokenizer,
        "Question: What is the capital of France?\nAnswer:",
        max_tokens=8,
        sampler=make_sampler(temp=0.0),
    )
    assert "Paris" in answer
