"""The in-process MLX backend, on the tiny random model: streaming, sampling, stops, cancelling,
resuming after a prefix, the model cache, and grammar-constrained JSON."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
from typing import TYPE_CHECKING, Any

import pytest

from workers.inference.backend import BackendError, BadRequestError, Delta, Finish, Generation
from workers.inference.mlx_backend import MlxBackend

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

HI = [{"role": "user", "content": "hi"}]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def backend():
    backend = MlxBackend()
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    import mlx_lm

    model, tokenizer = mlx_lm.load(str(tiny_model_dir))[:2]
    return model, tokenizer


def never() -> bool:
    return False


async def run(
    backend: MlxBackend, source: Path, cancelled: Callable[[], bool] = never, **fields: Any
) -> tuple[list[Delta], Finish]:
    request = Generation(model="tiny", source=str(source), **({"messages": HI} | fields))
    items = [item async for item in backend.generate(request, cancelled=cancelled)]
    assert all(isinstance(item, Delta) for item in items[:-1])
    assert isinstance(items[-1], Finish)
    return items[:-1], items[-1]  # type: ignore[return-value]


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def greedy(tiny: tuple[Any, Any], prompt: list[int], max_tokens: int) -> list[int]:
    """Argmax decoding by hand, recomputing the whole sequence each step (no KV cache)."""
    import mlx.core as mx

    model, tokenizer = tiny
    out: list[int] = []
    for _ in range(max_tokens):
        logits = model(mx.array([prompt + out]))[0, -1, : len(tokenizer)]
        token = int(mx.argmax(logits).item())
        if token in tokenizer.eos_token_ids:
            break
        out.append(token)
    return out


class CancelAfter:
    """Says "cancelled" from its (n+1)-th call on: the backend asks before each token."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.calls > self.n


async def test_a_chat_streams_the_greedy_decoding_then_one_finish_with_counts(
    backend, tiny, tiny_model_dir
):
    _, tokenizer = tiny
    prompt = tokenizer.apply_chat_template(HI, add_generation_prompt=True)
    expected = greedy(tiny, prompt, 24)

    deltas, finish = await run(backend, tiny_model_dir, max_tokens=24)

    assert text(deltas) == tokenizer.decode(expected)
    assert sum(d.tokens for d in deltas) == finish.completion_tokens == len(expected)
    assert finish.prompt_tokens == len(prompt)
    assert finish.endpoint == f"mlx:{tiny_model_dir}"
    assert finish.details["tokens_per_s"] > 0


async def test_max_tokens_ends_with_length_after_exactly_that_many_tokens(backend, tiny_model_dir):
    _, finish = await run(backend, tiny_model_dir, max_tokens=7, temperature=1.0, seed=4)
    assert (finish.reason, finish.completion_tokens) == ("length", 7)


async def test_a_seed_makes_sampling_repeatable_and_temperature_zero_is_deterministic(
    backend, tiny_model_dir
):
    sampled = [
        text((await run(backend, tiny_model_dir, temperature=1.0, seed=seed, max_tokens=30))[0])
        for seed in (1, 1, 2)
    ]
    assert sampled[0] == sampled[1] != sampled[2]
    greedy_runs = {text((await run(backend, tiny_model_dir, max_tokens=30))[0]) for _ in range(2)}
    assert len(greedy_runs) == 1


async def test_a_stop_string_ends_the_text_before_it_even_across_tokens(backend, tiny_model_dir):
    sample = dict(prompt="The quick", temperature=1.0, seed=7, max_tokens=60)
    pieces = [d.text for d in (await run(backend, tiny_model_dir, **sample))[0]]
    # A stop string that starts in one token and ends in the next: its start must be held back.
    i = next(
        i
        for i in range(3, len(pieces) - 1)
        if (pieces[i] + pieces[i + 1]).isascii() and len(pieces[i]) >= 2 and pieces[i + 1]
    )
    stop = pieces[i][-2:] + pieces[i + 1][:1]
    full = "".join(pieces)

    deltas, finish = await run(backend, tiny_model_dir, stop=(stop, "never-said"), **sample)

    assert text(deltas) == full[: full.index(stop)]
    assert finish.reason == "stop"


async def test_cancelling_after_n_tokens_finishes_with_exactly_n(backend, tiny_model_dir):
    sample = dict(temperature=1.0, seed=3, max_tokens=50)
    full = text((await run(backend, tiny_model_dir, **sample))[0])

    deltas, finish = await run(backend, tiny_model_dir, CancelAfter(5), **sample)

    assert (finish.reason, finish.completion_tokens) == ("cancelled", 5)
    assert sum(d.tokens for d in deltas) == 5
    assert full.startswith(text(deltas).rstrip("\ufffd"))


@pytest.mark.parametrize("leaves", ["closes", "drops"])
async def test_a_consumer_that_goes_away_stops_the_generation(backend, tiny_model_dir, leaves):
    asked = CancelAfter(10_000)
    request = Generation(
        model="tiny", source=str(tiny_model_dir), messages=HI, max_tokens=5000, temperature=1.0
    )
    stream = backend.generate(request, cancelled=asked)
    async for _ in stream:
        break
    if leaves == "closes":
        await stream.aclose()  # type: ignore[attr-defined]
    else:
        del stream  # asyncio closes a collected async generator on the loop
        gc.collect()

    # The backend's one thread is free again at once, not after thousands of tokens.
    _, finish = await asyncio.wait_for(run(backend, tiny_model_dir, max_tokens=3), timeout=2)
    assert finish.completion_tokens == 3
    assert asked.calls < 10


async def test_a_closed_backend_refuses_requests(tiny_model_dir):
    backend = MlxBackend()
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        await run(backend, tiny_model_dir)


async def test_a_prefix_is_continued_not_repeated_and_counted(backend, tiny_model_dir):
    deltas, whole = await run(backend, tiny_model_dir, max_tokens=30)
    assert all(d.tokens == 1 for d in deltas)  # so the first k deltas are the first k tokens
    prefix = text(deltas[:6])

    rest, finish = await run(backend, tiny_model_dir, max_tokens=30, prefix=prefix, prefix_tokens=6)

    assert text(rest) == text(deltas)[len(prefix) :]
    assert finish.completion_tokens == whole.completion_tokens == 30
    assert finish.reason == "length"


async def test_a_json_schema_is_followed_at_every_seed(backend, tiny_model_dir):
    response_format = {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON}}
    for seed in range(10):
        deltas, finish = await run(
            backend,
            tiny_model_dir,
            temperature=1.0,
            seed=seed,
            max_tokens=200,
            response_format=response_format,
        )
        assert finish.reason == "stop", (seed, text(deltas))
        value = json.loads(text(deltas))  # strict: a raw control character would fail here
        assert set(value) == {"name", "age"}
        assert isinstance(value["name"], str)
        assert len(value["name"]) <= 20
        assert isinstance(value["age"], int)
        assert 0 <= value["age"] <= 120


async def test_json_object_gives_an_object_whenever_it_finishes(backend, tiny_model_dir):
    # Any object is unbounded: a random model may write one long string until max_tokens.
    finished = 0
    for seed in range(10):
        deltas, finish = await run(
            backend,
            tiny_model_dir,
            temperature=1.0,
            seed=seed,
            max_tokens=120,
            response_format={"type": "json_object"},
        )
        if finish.reason == "stop":
            finished += 1
            assert isinstance(json.loads(text(deltas)), dict)
        else:
            assert text(deltas).startswith("{")
    assert finished >= 3


def test_inside_a_json_string_no_token_with_a_control_byte_is_allowed(tiny):
    import mlx.core as mx

    from workers.inference import structured

    _, tokenizer = tiny
    eos = sorted(tokenizer.eos_token_ids)
    vocab = structured.grammar_tokenizer(tokenizer._tokenizer, n_vocab=1024, eos_ids=eos)
    opened = tokenizer.encode('{"name":"', add_special_tokens=False)
    grammar = structured.grammar_for({"type": "json_schema", "json_schema": {"schema": PERSON}})
    assert grammar is not None
    constraint = structured.Constraint(vocab, grammar, eos_ids=eos, prefix=opened)

    allowed = constraint(mx.array(opened), mx.zeros((1, 1024)))[0].tolist()

    def has_control(token: int) -> bool:
        return any(b < 0x20 for b in vocab.decode_bytes([token]))

    assert any(has_control(t) for t in range(len(tokenizer)))  # the vocabulary has them
    assert not any(has_control(t) for t, logit in enumerate(allowed) if logit > -1e30)
    assert allowed[len(tokenizer) :] == [float("-inf")] * (1024 - len(tokenizer))


async def test_a_missing_model_folder_is_a_backend_error(backend, tmp_path):
    with pytest.raises(BackendError, match="no model folder"):
        await run(backend, tmp_path / "missing")
    with pytest.raises(BackendError, match="could not load"):
        await run(backend, tmp_path)


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_schema", "json_schema": {"schema": {"type": "no-such-type"}}},
        {"type": "json_schema", "json_schema": {"name": "no schema"}},
        {"type": "xml"},
    ],
)
async def test_an_invalid_response_format_is_a_bad_request(
    backend, tiny_model_dir, response_format
):
    with pytest.raises(BadRequestError):
        await run(backend, tiny_model_dir, response_format=response_format)


async def test_a_base_model_without_a_chat_template_gets_a_transcript(
    tiny, tiny_model_dir, tmp_path
):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "base")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    backend = MlxBackend()
    try:
        _, finish = await run(backend, folder, max_tokens=2)
    finally:
        backend.close()
    _, tokenizer = tiny
    assert finish.prompt_tokens == len(tokenizer.encode("user: hi\nassistant:"))


async def test_the_model_cache_loads_once_and_evicts_the_least_recently_used(
    tiny_model_dir, tmp_path
):
    a, b, c = (shutil.copytree(tiny_model_dir, tmp_path / name) for name in "abc")
    backend = MlxBackend(max_models=2)
    try:
        await asyncio.gather(*(run(backend, a, max_tokens=1) for _ in range(2)))
        assert backend.loads == 1
        await run(backend, b, max_tokens=1)
        await run(backend, a, max_tokens=1)  # a is now the most recently used
        await run(backend, c, max_tokens=1)
        assert backend.loaded_sources == [str(a), str(c)]
        assert backend.loads == 3
        await run(backend, b, max_tokens=1)
        assert backend.loads == 4
    finally:
        backend.close()
