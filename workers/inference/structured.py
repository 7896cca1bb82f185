"""Structured output for the MLX backend: OpenAI's ``response_format`` compiled by llguidance
and enforced token by token as an mlx-lm logits processor, with numpy on the CPU (no torch;
``llguidance.mlx`` is not used, its kernel needs Metal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import llguidance
import llguidance.hf
import llguidance.numpy
import mlx.core as mx
import numpy as np

from workers.inference.backend import BadRequestError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from llguidance._lib import JsonCompileOptions
    from numpy.typing import NDArray
    from transformers import PreTrainedTokenizerFast

_JSON_OPTIONS: JsonCompileOptions = {"whitespace_flexible": False}
"""No free whitespace: a weak model given the choice pads with blanks until ``max_tokens``."""


def grammar_for(response_format: dict[str, Any] | None) -> str | None:
    """The llguidance grammar ``response_format`` asks for, or None for free text.

    Raises ``BadRequestError`` for a format that is not OpenAI's ``text``, ``json_object`` or
    ``json_schema`` with a ``schema`` object (the schema itself is checked by ``Constraint``).
    """
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema: Any = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequestError("response_format json_schema needs a 'schema' object")
    else:
        raise BadRequestError(f"unsupported response_format type {kind!r}")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS)
    except ValueError as exc:
        raise BadRequestError(f"invalid response_format schema: {exc}") from exc


def grammar_tokenizer(
    tokenizer: PreTrainedTokenizerFast, *, n_vocab: int, eos_ids: Sequence[int]
) -> llguidance.LLTokenizer:
    """llguidance's view of a tokenizer (built once per loaded model: it is not free)."""
    return llguidance.hf.from_tokenizer(tokenizer, n_vocab=n_vocab, eos_token=list(eos_ids))


class Constraint:
    """An mlx-lm logits processor ``(tokens, logits) -> logits`` for one request: only the
    tokens the grammar allows next keep their logits; once the grammar is complete, only EOS.

    ``prefix`` are tokens already produced under the same grammar by an earlier attempt.
    """

    def __init__(
        self,
        tokenizer: llguidance.LLTokenizer,
        grammar: str,
        *,
        eos_ids: Sequence[int],
        prefix: Sequence[int] = (),
    ) -> None:
        # The constructor never raises for a bad grammar: the matcher starts in an error state.
        self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self._matcher.is_error():
            raise BadRequestError(f"invalid response_format schema: {self._matcher.get_error()}")
        if prefix and not self._matcher.consume_tokens(list(prefix)):
            raise BadRequestError("the prefix does not follow the response_format")
        self._n_vocab = tokenizer.vocab_size
        self._bitmask = llguidance.numpy.allocate_token_bitmask(1, self._n_vocab)
        self._eos_only = np.zeros(self._n_vocab, dtype=bool)
        self._eos_only[list(eos_ids)] = True
        self._started = False

    @property
    def error(self) -> str:
        """Why the matcher gave up (empty while it follows the grammar)."""
        return self._matcher.get_error()

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        # The first call sees the prompt's last token; every later one the token just sampled.
        if self._started:
            self._matcher.consume_token(cast("int", tokens[-1].item()))
        self._started = True
        allowed = self._allowed()
        size = logits.shape[-1]
        if size > len(allowed):  # the model's rows past the grammar's vocabulary: never
            allowed = np.concatenate([allowed, np.zeros(size - len(allowed), dtype=bool)])
        return mx.where(mx.array(allowed[:size]), logits, -mx.inf)

    def _allowed(self) -> NDArray[np.bool_]:
        matcher = self._matcher
        if matcher.is_error() or matcher.is_accepting() or matcher.is_stopped():
            return self._eos_only
        llguidance.numpy.fill_next_token_bitmask(matcher, self._bitmask)
        bits = np.unpackbits(self._bitmask.view(np.uint8), bitorder="little")
        return bits[: self._n_vocab].astype(bool)
