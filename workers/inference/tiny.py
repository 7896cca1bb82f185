"""A tiny model built offline: a byte-level BPE tokenizer trained on a built-in text, and a
randomly initialised two-layer Llama of mlx-lm's own model code, saved the way ``mlx_lm.load``
reads a model folder. Tests, the benchmark and ``uait models build-tiny`` use it: it exercises
the real loading and generation code of every backend without a download, at hundreds of
tokens per second on a CPU. What it says is noise, but grammar-constrained decoding still makes
it answer in valid JSON.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

BUILD_VERSION = 1
"""Bump when what ``build`` writes changes: cached folders of another version are rebuilt."""

VOCAB_SIZE = 1024
SEED = 0

_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_SPECIAL = ["<|pad|>", "<|eos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]

_CORPUS = """\
Universal AI Tools records every state change as an event. A command travels over Kafka to a
worker, which decides it and appends the events it caused to the event store in PostgreSQL.
Projections read the events in order and keep read models up to date; a rebuild replays them.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
{"name": "planner", "steps": [1, 2, 3], "ok": true, "score": 0.75, "tags": ["a", "b"]}
def add(a, b):\n    return a + b\n\nclass Model:\n    pass\n
Questions and answers: What is an event? A fact that happened. What is a command? A request.
Numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 1000; punctuation , . ; : ! ? ( ) [ ] { } " ' -
"""


def config_digest() -> str:
    """What identifies a build: its version and inputs (the cache key of a built folder)."""
    text = json.dumps([BUILD_VERSION, VOCAB_SIZE, SEED, _CHAT_TEMPLATE, _SPECIAL, _CORPUS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure(cache_dir: Path) -> Path:
    """The tiny model's folder under ``cache_dir``, built there once (atomically)."""
    target = cache_dir / f"tiny-{config_digest()}"
    if (target / "config.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".tiny-", dir=cache_dir))
    try:
        build(work)
        try:
            work.rename(target)
        except OSError:  # another process built it first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def build(folder: Path) -> None:
    """Write tokenizer and weights into ``folder`` (which exists)."""
    eos_id = _tokenizer(folder)
    _weights(folder, eos_id)


def _tokenizer(folder: Path) -> int:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|eos|>",
        "pad_token": "<|pad|>",
        "bos_token": None,
        "unk_token": None,
        "model_max_length": 2048,
        "chat_template": _CHAT_TEMPLATE,
        "added_tokens_decoder": {
            str(tokenizer.token_to_id(t)): {"content": t, "special": True} for t in _SPECIAL
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "<|eos|>", "pad_token": "<|pad|>"})
    )
    eos = tokenizer.token_to_id("<|eos|>")
    assert eos is not None
    return int(eos)


def _weights(folder: Path, eos_id: int) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    config = {
        "model_type": "llama",
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "intermediate_size": 256,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": VOCAB_SIZE,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "eos_token_id": [eos_id],
        "bos_token_id": None,
    }
    mx.random.seed(SEED)
    model = llama.Model(llama.ModelArgs.from_dict(config))  # type: ignore[no-untyped-call]
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "mlx"})
    (folder / "config.json").write_text(json.dumps(config, indent=1))
