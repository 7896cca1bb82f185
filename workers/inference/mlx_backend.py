"""In-process inference with MLX: a local model folder, loaded through a small LRU cache and run
by mlx-lm in one dedicated thread, its tokens streamed to the event loop as they come.

MLX is not thread-safe for concurrent generation, so a backend runs one request at a time
(model loads included) in its own thread; concurrent requests queue behind each other. That is
deliberate: for parallelism, run more processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workers.inference.backend import (
    BackendError,
    BadRequestError,
    Delta,
    Embedded,
    Finish,
    Generation,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

    import llguidance
    import mlx.core as mx
    from mlx.nn.layers.base import Module
    from mlx_lm.tokenizer_utils import TokenizerWrapper

    from workers.inference import structured
    from workers.inference.backend import FinishReason

    LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass
class _Model:
    model: Module
    tokenizer: TokenizerWrapper
    n_vocab: int
    """Rows of the model's logits (may exceed the tokenizer's vocabulary: padding)."""
    grammar_tokenizer: llguidance.LLTokenizer | None = field(default=None)


class MlxBackend:
    """Generates with mlx-lm from the model folder named by ``Generation.source``.

    ``max_tokens`` bounds the whole completion, ``prefix_tokens`` included. ``cancelled`` is
    called from the backend's thread, before each token.
    """

    name = "mlx"

    def __init__(self, *, max_models: int = 2) -> None:
        self._max_models = max_models
        self._models: OrderedDict[str, _Model] = OrderedDict()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlx-generate")
        self.loads = 0
        """How many times a model folder was loaded (a cache miss)."""

    @property
    def loaded_sources(self) -> list[str]:
        """The cached model folders, least recently used first."""
        return list(self._models)  # a snapshot; never waits for a load holding the lock

    def close(self) -> None:
        """Stop the running generation between two tokens and refuse new ones."""
        self._closing.set()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def generate(
        self, request: Generation, *, cancelled: Callable[[], bool]
    ) -> AsyncIterator[Delta | Finish]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | Finish | BaseException] = asyncio.Queue()
        gone = threading.Event()  # the consumer closed (or dropped) this iterator

        def put(item: Delta | Finish | BaseException) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed
                gone.set()

        def stopping() -> bool:
            return cancelled() or gone.is_set()

        def run() -> None:
            try:
                with _request_stream() as stream:
                    for item in self._stream(request, started, stream, stopping):
                        put(item)
            except BackendError as exc:
                put(exc)
            except BaseException as exc:
                put(BackendError(f"mlx generation failed: {exc!r}"))
                if not isinstance(exc, Exception):
                    raise

        started = time.perf_counter()
        try:
            self._thread.submit(run)
        except RuntimeError as exc:  # shut down
            raise BackendError("the mlx backend is closed") from exc
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            gone.set()

    async def embed(self, source: str, texts: list[str]) -> Embedded:
        """The mean of the model's last hidden states over each text's tokens, L2-normalised
        (what a decoder model offers as an embedding; a dedicated embedding model does better).
        """

        def run() -> Embedded:
            import mlx.core as mx

            folder = Path(source).expanduser().resolve()
            with _request_stream():
                loaded = self._load(folder)
                body = getattr(loaded.model, "model", None)
                if body is None:
                    raise BadRequestError(f"the model in {folder} has no hidden states to pool")
                vectors, tokens = [], 0
                for text in texts:
                    ids = loaded.tokenizer.encode(text, add_special_tokens=False)
                    if not ids:
                        raise BadRequestError("an input has no tokens")
                    tokens += len(ids)
                    hidden = body(mx.array([ids]))[0].astype(mx.float32)
                    mean = mx.mean(hidden, axis=0)
                    vector = mean / (mx.linalg.norm(mean) + 1e-12)
                    values: Any = vector.tolist()
                    vectors.append([float(x) for x in values])
                return Embedded(vectors, tokens, f"mlx:{folder}")

        try:
            future = self._thread.submit(run)
        except RuntimeError as exc:
            raise BackendError("the mlx backend is closed") from exc
        try:
            return await asyncio.wrap_future(future)
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"mlx embedding failed: {exc!r}") from exc

    def _stream(
        self,
        request: Generation,
        started: float,
        stream: mx.Stream,
        cancelled: Callable[[], bool],
    ) -> Iterator[Delta | Finish]:
        """The generation, run in the backend's thread."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_sampler

        from workers.inference import structured

        grammar = structured.grammar_for(request.response_format)
        folder = Path(request.source).expanduser().resolve()
        loaded = self._load(folder)
        tokenizer = loaded.tokenizer
        prompt = _prompt_ids(tokenizer, request)
        prefix = (
            tokenizer.encode(request.prefix, add_special_tokens=False) if request.prefix else []
        )
        if not prompt + prefix:
            raise BadRequestError("the prompt is empty")
        eos_ids = sorted(tokenizer.eos_token_ids)
        processors: list[LogitsProcessor] = []
        constraint = None if grammar is None else _constraint(loaded, grammar, eos_ids, prefix)
        if constraint is not None:
            processors.append(constraint)
        elif loaded.n_vocab > len(tokenizer):
            padding = mx.arange(loaded.n_vocab) >= len(tokenizer)
            processors.append(lambda _, logits: mx.where(padding, -mx.inf, logits))
        budget = request.max_tokens - request.prefix_tokens
        text = _Detokenizer(tokenizer, context=(prompt + prefix)[-4:])
        stops = _StopFilter(request.stop, released=request.prefix)
        if request.seed is not None:
            mx.random.seed(request.seed)
        steps = generate_step(
            mx.array(prompt + prefix),
            loaded.model,
            stream,
            max_tokens=max(budget, 1),
            sampler=make_sampler(request.temperature, request.top_p),
            logits_processors=processors,
        )
        reason: FinishReason = "length"
        count = waiting = 0  # tokens generated; of them, not yet part of a Delta
        first = last = started
        try:
            while count < budget:
                if cancelled() or self._closing.is_set():
                    reason = "cancelled"
                    break
                step = next(steps, None)
                if step is None:
                    break
                token = int(step[0])
                if token in eos_ids:
                    reason = "stop"
                    break
                count, waiting, last = count + 1, waiting + 1, time.perf_counter()
                if count == 1:
                    first = last
                released = stops.feed(text.add(token))
                if released:
                    yield Delta(released, tokens=waiting)
                    waiting = 0
                if stops.stopped:
                    reason = "stop"
                    break
        finally:
            steps.close()
        if not stops.stopped:
            rest = stops.feed(text.finish())
            if stops.stopped:
                reason = "stop"
            else:
                rest += stops.flush()
            if rest:
                yield Delta(rest, tokens=waiting)
        details: dict[str, Any] = {}
        if count:
            details["time_to_first_token_s"] = round(first - started, 4)
        if count > 1:
            details["tokens_per_s"] = round((count - 1) / max(last - first, 1e-9), 1)
        if constraint is not None and constraint.error:
            details["grammar_error"] = constraint.error
        yield Finish(
            reason=reason,
            prompt_tokens=len(prompt),
            completion_tokens=request.prefix_tokens + count,
            endpoint=f"mlx:{folder}",
            details=details,
        )

    def _load(self, folder: Path) -> _Model:
        """The cached model in ``folder``, loaded on a miss (once, under the lock)."""
        key = str(folder)
        with self._lock:
            cached = self._models.get(key)
            if cached is not None:
                self._models.move_to_end(key)
                return cached
            # Checked first: mlx_lm.load takes a missing path for a Hub repository to download.
            if not folder.is_dir():
                raise BackendError(f"no model folder at {folder}")
            import mlx_lm

            try:
                result = mlx_lm.load(key)
                model, tokenizer = result[0], result[1]
            except Exception as exc:
                raise BackendError(f"could not load the model in {folder}: {exc!r}") from exc
            args = getattr(model, "args", None)
            n_vocab = int(getattr(args, "vocab_size", 0) or len(tokenizer))
            loaded = _Model(model, tokenizer, n_vocab)
            self._models[key] = loaded
            self.loads += 1
            while len(self._models) > self._max_models:
                self._models.popitem(last=False)
            return loaded


@contextlib.contextmanager
def _request_stream() -> Iterator[mx.Stream]:
    """A new MLX stream for one request, the thread's default while it runs, destroyed after.

    A thread still holding streams when the interpreter exits makes the process abort
    ("terminate called without an active exception", mlx 0.32 on Linux), and
    ``mx.clear_streams()`` destroys the thread's default stream for good: so every request
    brings its own stream and nothing in this thread uses the default one.
    """
    import mlx.core as mx

    stream = mx.new_stream(mx.default_device())
    try:
        with mx.stream(stream):
            yield stream
    finally:
        mx.clear_streams()


def _constraint(
    loaded: _Model, grammar: str, eos_ids: list[int], prefix: list[int]
) -> structured.Constraint:
    from workers.inference import structured

    if loaded.grammar_tokenizer is None:
        loaded.grammar_tokenizer = structured.grammar_tokenizer(
            loaded.tokenizer._tokenizer,
            n_vocab=max(loaded.n_vocab, len(loaded.tokenizer)),
            eos_ids=eos_ids,
        )
    return structured.Constraint(loaded.grammar_tokenizer, grammar, eos_ids=eos_ids, prefix=prefix)


def _prompt_ids(tokenizer: TokenizerWrapper, request: Generation) -> list[int]:
    """The prompt's tokens: the chat template applied to ``messages``, or ``prompt`` encoded."""
    if request.messages is None:
        return list(tokenizer.encode(request.prompt or ""))
    try:
        if tokenizer.has_chat_template:
            ids = tokenizer.apply_chat_template(  # type: ignore[no-untyped-call]
                request.messages, add_generation_prompt=True
            )
            return [int(i) for i in ids]
    except Exception as exc:  # the template rejects the messages (e.g. roles out of order)
        raise BadRequestError(f"the chat template rejects the messages: {exc}") from exc
    # A base model has no template: a plain transcript it can continue.
    lines = [f"{m.get('role', 'user')}: {_text(m.get('content'))}\n" for m in request.messages]
    return list(tokenizer.encode("".join(lines) + "assistant:"))


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


class _Detokenizer:
    """Token ids to text one token at a time. A character split over several byte-level tokens
    waits for its last byte; decoding starts a few context tokens back, so a decoder that drops
    the leading space of a text (SentencePiece) keeps it after the prompt or a prefix."""

    def __init__(self, tokenizer: TokenizerWrapper, *, context: list[int]) -> None:
        self._decode = tokenizer.decode
        self._ids = list(context)
        self._start = 0
        self._read = len(self._ids)

    def add(self, token: int) -> str:
        self._ids.append(token)
        return self._advance(final=False)

    def finish(self) -> str:
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        done: str = self._decode(self._ids[self._start : self._read])
        text: str = self._decode(self._ids[self._start :])
        if len(text) <= len(done) or (text.endswith("\ufffd") and not final):
            return ""
        self._start, self._read = self._read, len(self._ids)
        return text[len(done) :]


class _StopFilter:
    """Releases generated text, holding back a tail that could be the start of a stop string;
    ``stopped`` once one appears (neither it nor anything after it is released)."""

    def __init__(self, stops: tuple[str, ...], *, released: str) -> None:
        self._stops = [s for s in stops if s]
        self._keep = max((len(s) for s in self._stops), default=1) - 1
        self._tail = released[max(0, len(released) - self._keep) :] if self._keep else ""
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if not self._stops or self.stopped:
            return "" if self.stopped else text
        window, base = self._tail + self._held + text, len(self._tail)
        # A stop string counts only if it ends in new text (the released tail was checked).
        hits = [i for s in self._stops if (i := window.find(s, max(0, base - len(s) + 1))) >= 0]
        if hits:
            self.stopped = True
            return window[base : max(base, min(hits))]
        fresh = len(window) - base
        hold = max(
            (
                k
                for s in self._stops
                for k in range(1, min(len(s), fresh + 1))
                if window.endswith(s[:k])
            ),
            default=0,
        )
        release = window[base : len(window) - hold]
        self._held = window[len(window) - hold :]
        tail = self._tail + release
        self._tail = tail[max(0, len(tail) - self._keep) :]
        return release

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held
