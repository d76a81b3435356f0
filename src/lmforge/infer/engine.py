"""The inference engine: one scheduler for `lmforge generate`, task evaluation and the HTTP server.

A decoder's cache holds one sequence per row (a slot, `models.blocks.CacheWindow`), each with its own length, so
requests of different lengths decode together without left padding and a finished request's slot takes the next
waiting one at once. Each `step()`:

1. retires cancelled requests and admits waiting ones into free slots, reusing the longest start of the prompt
   that some row still holds (prefix caching: a shared system prompt is computed once);
2. prefills: feeds up to `prefill_chunk` prompt tokens (of one or more admitted requests, the fewest left first,
   in as few padded forwards as pack well), so a long prompt is split over several steps and never stalls the
   running streams, and a short one admitted behind it still gets its first token at once;
3. decodes: one forward over the rows that hold a running sequence (`decode_step`), one token for each, sampled
   with that request's own parameters and `torch.Generator` (seeded sampling gives the same tokens alone or
   batched); a request retires on EOS / a stop token, a stop string, its max tokens or a full context.

Text is streamed as it becomes final (`TextStream`: incremental detokenisation that holds back incomplete UTF-8
and a possible start of a stop string). Greedy requests can be sped up by speculative decoding (a draft model of
the same tokenizer, or n-gram prompt lookup), whose output is exactly plain greedy's.

Encoder-decoders (t5) run through the same API in static batches on the simpler static-batch functions
(`infer.static_batch`): their cross-attention cache is per batch, not per slot. Recurrent and n-gram models do not
generate (the registry says so), so the engine refuses them in one line, as `lmforge generate` always has.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.infer.sampling import apply_repetition_penalty, filter_logits
from lmforge.infer.static_batch import encoder_decoder_start
from lmforge.infer.text import TextStream
from lmforge.infer.weight_layout import Swap, transpose_linears
from lmforge.models.blocks import CacheWindow, KVCache
from lmforge.models.registry import GENERATE, Kind, families_that, kind_of, require

# End-of-turn spellings of chat tokenizers: generation stops at them as at EOS.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class EngineError(UserError):
    """A request the engine cannot run as given: one line saying what and how to fix it."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request is sampled and when it stops."""

    max_tokens: int = 16  # >= 1
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # same seed => same tokens, alone or batched with others
    stop: tuple[str, ...] = ()  # stop strings (not included in the output text)
    stop_token_ids: tuple[int, ...] = ()  # in addition to the tokenizer's EOS / end-of-turn
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None = none; k >= 0 = the chosen token's logprob + the top-k alternatives
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # CTRL-style, over the prompt and the output (1 = off)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    @property
    def penalised(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


@dataclass
class TokenEvent:
    """One generated step: the text it made final (may be "" while held back) and the tokens that produced it."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    top_logprobs: list[dict[str, float]] | None
    finish_reason: str | None  # None until the last event: "stop" | "length" | "cancelled" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None  # with finish_reason "error": the step failed (a bug or out of memory), why


@dataclass
class Completion:
    """A finished request: its whole text and tokens (no stop token, text cut before a stop string)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[float] | None
    top_logprobs: list[dict[str, float]] | None
    prompt_tokens: int
    completion_tokens: int


def check_params(params: SamplingParams) -> SamplingParams:
    """The request's parameters, validated (EngineError naming the field), with `stop` as a tuple of strings."""
    if not isinstance(params.max_tokens, int) or params.max_tokens < 1:
        raise EngineError(f"max_tokens must be a positive number of tokens, got {params.max_tokens!r}",
                          fix="ask for at least 1 token")
    stop = params.stop
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, Sequence) or not all(isinstance(s, str) for s in stop):
        raise EngineError(f"stop must be a string or a list of strings, got {params.stop!r}",
                          fix='pass stop strings such as ["\\n\\n"]; stop tokens go in stop_token_ids')
    if any(s == "" for s in stop):
        raise EngineError("an empty stop string would stop before the first token", fix="drop the empty string")
    if not all(isinstance(t, int) for t in params.stop_token_ids):
        raise EngineError(f"stop_token_ids must be token ids (integers), got {params.stop_token_ids!r}",
                          fix="pass integer ids, or put strings in stop")
    checks = [("temperature", params.temperature >= 0), ("top_p", 0 < params.top_p <= 1),
              ("top_k", params.top_k >= 0), ("min_p", 0 <= params.min_p <= 1),
              ("repetition_penalty", params.repetition_penalty > 0),
              ("logprobs", params.logprobs is None or params.logprobs >= 0)]
    for name, ok in checks:
        if not ok:
            raise EngineError(f"{name} {getattr(params, name)!r} is out of range",
                              fix="temperature >= 0, 0 < top_p <= 1, top_k >= 0, 0 <= min_p <= 1, "
                                  "repetition_penalty > 0, logprobs >= 0")
    if tuple(stop) != params.stop:
        params = SamplingParams(**{**params.__dict__, "stop": tuple(stop)})
    return params


@dataclass(eq=False)
class _Request:
    """One request's state in the scheduler."""

    id: str
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[TokenEvent], None]
    text: TextStream
    max_new: int  # max_tokens, cut to what the context leaves
    generator: torch.Generator | None = None
    slot: int = -1  # cache row, once admitted
    fed: int = 0  # tokens written to the cache (prompt first, then outputs)
    pending: int | None = None  # the last chosen token, to be fed next
    output: list[int] = field(default_factory=list)
    generated: int = 0  # tokens chosen (an EOS counts, though it is not in `output`)
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: str | None = None
    cancelled: bool = False
    seen: Tensor | None = None  # (V,) bool: prompt + output tokens, for the repetition penalty
    counts: Tensor | None = None  # (V,) float: output token counts, for presence / frequency penalties
    draft_fed: int = 0  # tokens the draft model's cache holds of this sequence

    @property
    def sequence(self) -> list[int]:
        return [*self.prompt, *self.output]


class RequestStream:
    """What `Engine.submit` returns: `async for event in stream` (or plain `for` outside asyncio) yields the
    request's `TokenEvent`s, the last with its finish_reason. `cancel()`, closing the iterator or cancelling the
    task that consumes it frees the request's slot before the engine's next step."""

    def __init__(self, engine: Engine, request_id: str) -> None:
        self.engine, self.request_id = engine, request_id
        self.finished = False
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            self._async_queue: asyncio.Queue[TokenEvent] = asyncio.Queue()
        except RuntimeError:
            self._loop = None
        self._queue: queue.Queue[TokenEvent] = queue.Queue()

    def deliver(self, event: TokenEvent) -> None:
        """Called by the engine's step, from whatever thread runs it."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening any more
                self._loop.call_soon_threadsafe(self._async_queue.put_nowait, event)
        else:
            self._queue.put(event)

    def cancel(self) -> None:
        if not self.finished:
            self.engine.cancel(self.request_id)

    def __aiter__(self) -> AsyncIterator[TokenEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[TokenEvent]:
        try:
            while not self.finished:
                event = await self._async_queue.get()
                self.finished = event.finish_reason is not None
                yield event
        finally:  # the consumer stopped early (break, aclose, task cancelled): free the slot
            self.cancel()

    def __iter__(self) -> Iterator[TokenEvent]:
        try:
            while not self.finished:
                event = self._queue.get()
                self.finished = event.finish_reason is not None
                yield event
        finally:
            self.cancel()


class Engine:
    """Continuous batching over a per-slot KV cache (see the module docstring).

    `max_batch` sequences decode at once (cache rows); `max_seq_len` is the model's context window and
    `cache_len` each row's capacity (the context by default; smaller saves memory and caps prompt + output).
    `draft` (a model of the same tokenizer) or `prompt_lookup=True` turns on speculative decoding of
    `num_speculative` tokens for greedy requests. `transposed_weights` (default: on the CPU) swaps the model's
    larger linear layers for ones with a transposed weight copy while the engine runs (`infer.weight_layout`);
    `close()` gives the model its own layers back. Use it from one thread at a time, or `start()` it and submit
    from an event loop.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer | None, *, max_batch: int = 16,
                 device: torch.device | str | None = None, cache_len: int | None = None, prefill_chunk: int = 512,
                 stop_token_ids: Sequence[int] | None = None, pad_id: int | None = None,
                 decoder_start_id: int | None = None, draft: nn.Module | None = None,
                 draft_tokenizer: Tokenizer | None = None, prompt_lookup: bool = False,
                 num_speculative: int = 4, static_step: bool | None = None, prefix_cache: bool = True,
                 transposed_weights: bool | None = None) -> None:
        require(model.cfg, GENERATE, needed_for="generation",
                fix=f"generate from a {', '.join(f.name for f in families_that(GENERATE))} language model (lstm "
                    "models are scored by `lmforge eval`, bert ones embed or export with `lmforge embed` / "
                    "`lmforge export`, classifiers report their scores in the run's metrics)")
        if max_batch < 1 or prefill_chunk < 1:
            raise ValueError("max_batch and prefill_chunk must be at least 1")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.cfg = model.cfg
        self.max_seq_len: int = model.cfg.max_seq_len
        self.seq2seq = kind_of(model.cfg) == Kind.ENCODER_DECODER
        self.max_batch = max_batch
        self.cache_len = min(cache_len or self.max_seq_len, self.max_seq_len)
        self.prefill_chunk = prefill_chunk
        specials = _special_ids(tokenizer)
        self.stop_token_ids = frozenset(stop_token_ids if stop_token_ids is not None
                                        else _default_stop_ids(tokenizer, specials))
        self.pad_id = pad_id if pad_id is not None else specials.get("pad", 0)
        self.decoder_start_id = decoder_start_id
        if self.seq2seq and decoder_start_id is None:
            from lmforge.data.tokenizer import decoder_start_id as start_of

            try:
                self.decoder_start_id = start_of(specials)
            except KeyError:
                raise EngineError("the tokenizer has no <pad>, <bos> or <eos> to start the decoder with",
                                  fix="generate with the tokenizer the model was trained with") from None
        self.draft = _check_draft(draft, draft_tokenizer, model, tokenizer) if draft is not None else None
        self.prompt_lookup = prompt_lookup
        self.num_speculative = num_speculative
        self.static_step = self.device.type == "cuda" if static_step is None else static_step
        self._slots: list[_Request | None] = [None] * self.max_batch
        self._waiting: deque[_Request] = deque()
        self._inbox: deque[tuple[str, object]] = deque()  # submissions and cancellations from any thread
        self._ids = itertools.count()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._step_fn: Callable[[Tensor, Tensor], Tensor] | None = None
        # Prefix caching: the tokens whose keys and values each cache row holds, from slot 0. A finished request's
        # row keeps them until they are overwritten, so a new prompt that starts the same way (a system prompt,
        # a few-shot preamble, a retried request) copies those slots instead of recomputing them.
        self.prefix_cache = prefix_cache and not self.seq2seq
        self._held: list[list[int]] = [[] for _ in range(self.max_batch)]
        self.prefix_tokens_reused = 0  # prompt tokens taken from the cache instead of computed (for /metrics)
        self._caches: list[KVCache] = []
        # An encoder-decoder's running batch: its requests, next logits, decode step and the step's index.
        self._s2s_batch: list[_Request] = []
        self._s2s_logits: Tensor | None = None
        self._s2s_step: Callable[[Tensor, int], Tensor] | None = None
        self._s2s_t = 0
        if not self.seq2seq:
            self.model.setup_cache(self.max_batch, self.cache_len)
            self._caches = [m for m in model.modules() if isinstance(m, KVCache)]
            if self.draft is not None:
                self.draft_len = min(self.cache_len, self.draft.cfg.max_seq_len)
                self.draft.setup_cache(self.max_batch, self.draft_len)
        # On the CPU, small products run faster through transposed weight copies (`infer.weight_layout`): the
        # model's linear layers are swapped while the engine runs and put back by `close()`.
        if transposed_weights is None:
            transposed_weights = self.device.type == "cpu"
        self._swaps: list[Swap] = []
        if transposed_weights:
            self._swaps = [transpose_linears(m) for m in (self.model, self.draft) if m is not None]

    # --- requests -------------------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams,
               sink: Callable[[TokenEvent], None] | None = None) -> RequestStream:
        """Queue a request (validated now: EngineError); its events arrive through the returned stream (or
        `sink`, called from the step's thread, when given)."""
        request = self._make_request(prompt_ids, params)
        stream = RequestStream(self, request.id)
        request.sink = sink or stream.deliver
        self._inbox.append(("submit", request))
        self._wake.set()
        return stream

    def cancel(self, request_id: str) -> None:
        """Stop a request: its slot is freed before the next step, and its last event says "cancelled"."""
        self._inbox.append(("cancel", request_id))
        self._wake.set()

    @property
    def running(self) -> int:
        return sum(r is not None for r in self._slots)

    @property
    def waiting(self) -> int:
        return len(self._waiting) + self._unread

    @property
    def _unread(self) -> int:
        """Submissions not yet read by the step (the inbox may change under us: another thread appends)."""
        while True:
            try:
                return sum(kind == "submit" for kind, _ in list(self._inbox))
            except RuntimeError:
                continue

    def _make_request(self, prompt_ids: list[int], params: SamplingParams) -> _Request:
        params = check_params(params)
        prompt = [int(t) for t in prompt_ids]
        if not prompt:
            raise EngineError("empty prompt", fix="give at least one token (a decoder can start from EOS)")
        limit = self.max_seq_len if self.seq2seq else self.max_seq_len - 1
        if len(prompt) > limit:
            raise EngineError(f"prompt of {len(prompt)} tokens does not fit the model's {self.max_seq_len}-token "
                              f"context", fix=f"shorten the prompt to at most {limit} tokens")
        if not self.seq2seq and len(prompt) >= self.cache_len:
            raise EngineError(f"prompt of {len(prompt)} tokens does not fit the engine's {self.cache_len}-token "
                              f"cache rows", fix="shorten the prompt, or build the engine with a larger cache_len")
        bad = [t for t in prompt if not 0 <= t < self.cfg.vocab_size]
        if bad:
            raise EngineError(f"token id {bad[0]} is outside the model's vocabulary of {self.cfg.vocab_size}",
                              fix="encode the prompt with the model's tokenizer")
        room = self.max_seq_len - 1 if self.seq2seq else self.cache_len - len(prompt)
        request = _Request(id=f"req-{next(self._ids)}", prompt=prompt, params=params, sink=lambda _e: None,
                           text=TextStream(self.tokenizer, params.stop), max_new=min(params.max_tokens, room))
        if params.stop and self.tokenizer is None:
            raise EngineError("stop strings need the engine's tokenizer", fix="build the Engine with a tokenizer")
        if params.seed is not None:
            request.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        if params.logprobs is not None:
            request.logprobs, request.top_logprobs = [], []
        V = self.cfg.vocab_size
        if params.repetition_penalty != 1.0:
            request.seen = torch.zeros(V, dtype=torch.bool, device=self.device)
            if not self.seq2seq:  # a decoder's prompt is part of the text it must not repeat
                request.seen[torch.tensor(prompt, device=self.device)] = True
        if params.presence_penalty or params.frequency_penalty:
            request.counts = torch.zeros(V, device=self.device)
        return request

    # --- synchronous use ------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams],
                 on_event: Callable[[int, TokenEvent], None] | None = None) -> list[Completion]:
        """Run these prompts to completion (the same scheduler as the server); `on_event(i, event)` streams."""
        many = params if isinstance(params, list) else [params] * len(prompts)
        if len(many) != len(prompts):
            raise ValueError("one SamplingParams per prompt, or one for all")
        requests = [self._make_request(p, sp) for p, sp in zip(prompts, many)]  # all validated before any runs
        results: list[list[TokenEvent]] = [[] for _ in prompts]
        done = threading.Semaphore(0)

        def sink_of(i: int) -> Callable[[TokenEvent], None]:
            def sink(event: TokenEvent) -> None:
                results[i].append(event)
                if on_event is not None:
                    on_event(i, event)
                if event.finish_reason is not None:
                    done.release()
            return sink

        for i, request in enumerate(requests):
            request.sink = sink_of(i)
            self._inbox.append(("submit", request))
        self._wake.set()
        if self._thread is not None:  # the background loop runs them
            for _ in requests:
                done.acquire()
            failed = next((e.error for events in results for e in events if e.error), None)
            if failed:
                raise RuntimeError(f"the engine's step failed: {failed}")
        else:
            while not all(r.finish_reason for r in requests):
                self.step()
        return [_completion(r, events) for r, events in zip(requests, results)]

    # --- the background loop --------------------------------------------------------------------------------
    async def start(self) -> None:
        """Run the step loop in a background thread (the forward passes release the GIL)."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="lmforge-engine", daemon=True)
            self._thread.start()

    async def stop(self, drain: bool = True) -> None:
        """Stop the loop: after the requests in flight finish (drain), or cancelling them."""
        if self._thread is None:
            return
        if not drain:  # the step's thread cancels everything it holds, and what was submitted before this
            self._inbox.append(("cancel", None))
            self._wake.set()
        while self.busy:
            await asyncio.sleep(0.01)
        self._stopping = True
        self._wake.set()
        thread, self._thread = self._thread, None
        await asyncio.to_thread(thread.join)

    @property
    def busy(self) -> bool:
        return bool(self._inbox or self._waiting or any(r is not None for r in self._slots))

    def _loop(self) -> None:
        while not self._stopping:
            if not self.busy:
                self._wake.wait(0.1)
                self._wake.clear()
                continue
            try:
                self.step()
            except Exception as err:  # a failed step must not leave streams waiting forever
                self._fail_all(f"{type(err).__name__}: {err}")

    def _fail_all(self, why: str) -> None:
        """End every request in flight with finish_reason "error" (the step raised: a bug, or out of memory)."""
        self._read_inbox()
        for r in [*self._waiting, *(r for r in self._slots if r is not None)]:
            if r.finish_reason is None:
                r.finish_reason, r.pending = "error", None
                if r.slot >= 0:
                    self._slots[r.slot] = None
                event = self._event(r, "", [], "error")
                event.error = why
                r.sink(event)
        self._waiting.clear()

    def close(self) -> None:
        """Free the model's cache (the engine owns its lifetime) and give it back its own linear layers."""
        for swap in self._swaps:
            swap.restore()
        if not self.seq2seq:
            self.model.clear_cache()
            if self.draft is not None:
                self.draft.clear_cache()

    # --- one scheduler step ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> None:
        """Admit, prefill a chunk, decode one token for every running sequence, retire the finished."""
        self._read_inbox()
        self._admit()
        if self.seq2seq:
            self._seq2seq_step()
            return
        self._prefill()
        decoding = [r for r in self._slots if r is not None and r.pending is not None]
        if not decoding:
            return
        if len(decoding) == 1 and self._speculates(decoding[0]):
            self._speculative_step(decoding[0])
            return
        self._decode(decoding)

    def _read_inbox(self) -> None:
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "submit":
                self._waiting.append(item)
                continue
            for r in [*self._waiting, *(r for r in self._slots if r is not None)]:
                if (item is None or r.id == item) and r.finish_reason is None:  # None: cancel everything
                    self._finish(r, "cancelled", "")
            self._waiting = deque(r for r in self._waiting if r.finish_reason is None)

    def _admit(self) -> None:
        if self.seq2seq:
            self._seq2seq_admit()
            return
        free = [slot for slot, occupant in enumerate(self._slots) if occupant is None]
        while self._waiting and free:
            request = self._waiting.popleft()
            slot = self._pick_slot(request, free) if self.prefix_cache else free[0]
            free.remove(slot)
            request.slot = slot
            self._slots[slot] = request
            if self.prefix_cache:
                self._reuse_prefix(request)
            else:
                self._held[slot] = []

    def _pick_slot(self, r: _Request, free: list[int]) -> int:
        """The free row whose reuse loses the fewest held tokens other prompts could still start with (those
        past what this prompt shares with it); of those, the one sharing most (reused in place, no copy)."""
        def cost(slot: int) -> tuple[int, int, int]:
            shared = _common_prefix(self._held[slot], r.prompt)
            return len(self._held[slot]) - shared, -shared, slot

        return min(free, key=cost)

    def _reuse_prefix(self, r: _Request) -> None:
        """Start the request's row with the longest start of its prompt some row already holds (copied when it
        is another row's); at least the prompt's last token is left to compute, for the first logits."""
        row, n = r.slot, _common_prefix(self._held[r.slot], r.prompt)
        for other, held in enumerate(self._held):
            m = _common_prefix(held, r.prompt)
            if m > n:
                row, n = other, m
        n = min(n, len(r.prompt) - 1)
        if row != r.slot and n > 0:
            for cache in self._caches:
                cache.k[r.slot, :, :n] = cache.k[row, :, :n]
                cache.v[r.slot, :, :n] = cache.v[row, :, :n]
        self._held[r.slot] = r.prompt[:n]
        r.fed = n
        self.prefix_tokens_reused += n

    def _prefill(self) -> None:
        """Feed the next chunk of each prompt still prefilling, `prefill_chunk` tokens in all this step.

        The prompts with the fewest tokens left go first (shortest remaining prefill first): a short prompt that
        arrives behind a long one gets its first token in the step that admits it, and the long one takes what is
        left of the budget, as it would have the whole budget alone. The chunks then run in as few forwards as
        pack well: neighbouring rows right-padded into one forward while at most half of what it computes is
        padding (`packed_runs`), so prompts admitted together into scattered free rows do not cost a forward
        each, which at batch 1 on the CPU is a full read of the weights."""
        prefilling = [r for r in self._slots if r is not None and r.pending is None]
        budget, chunks = self.prefill_chunk, []
        for r in sorted(prefilling, key=lambda r: len(r.prompt) - r.fed):
            if budget <= 0:
                break
            n = min(budget, len(r.prompt) - r.fed)
            budget -= n
            chunks.append((r, n))
        for run in packed_runs(sorted(chunks, key=lambda chunk: chunk[0].slot)):
            if len(run) > 1:
                first, last = run[0][0].slot, run[-1][0].slot
                logits = self._forward_rows(run, first, last + 1, max(n for _, n in run))
            else:
                (r, n), = run
                logits = self._forward(r.prompt[r.fed:r.fed + n], r.slot, r.fed)
            for (r, n), row in zip(run, logits):
                r.fed += n
                self._held[r.slot] = r.prompt[:r.fed]
                if r.fed == len(r.prompt):
                    self._accept(r, self._choose(row[None], [r])[0], row)

    def _forward_rows(self, chunks: list[tuple[_Request, int]], first: int, stop: int, T: int) -> Tensor:
        """Several prompts' chunks in one forward over cache rows first..stop-1, right-padded to T tokens: the
        logits (n_chunks, V) after each chunk's last token. Padding and the rows between (dummy tokens) write
        only at or past each row's next unwritten slot, which nothing attends to before it is rewritten; the
        positions are clamped to the cache row, whose last slot is then such a slot too."""
        starts = self._next_slots(first, stop)
        idx = torch.zeros(stop - first, T, dtype=torch.long)
        for r, n in chunks:
            idx[r.slot - first, :n] = torch.tensor(r.prompt[r.fed:r.fed + n])
        pos = (torch.tensor(starts)[:, None] + torch.arange(T)[None]).clamp(max=self.cache_len - 1)
        idx, pos = idx.to(self.device), pos.to(self.device)
        window = CacheWindow(slice(first, stop), int(pos.max()) + 1)
        hidden = self.model.hidden(idx, input_pos=pos, window=window)
        rows = torch.tensor([r.slot - first for r, _ in chunks], device=self.device)
        ends = torch.tensor([n - 1 for _, n in chunks], device=self.device)
        return self.model.lm_head(hidden[rows, ends])

    def _forward(self, ids: list[int], slot: int, start: int) -> Tensor:
        """Feed `ids` to one cache row from position `start`: the logits (1, V) after the last of them."""
        n = len(ids)
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + n, device=self.device)[None]
        window = CacheWindow(slice(slot, slot + 1), start + n)
        # The head on the last position only: a prompt's other positions' logits would be thrown away.
        hidden = self.model.hidden(idx, input_pos=pos, window=window)[:, -1:]
        return self.model.lm_head(hidden)[:, -1]

    def _decode(self, decoding: list[_Request]) -> None:
        # One forward over the rows from the first to the last running one (rows between, free or
        # mid-prefill, ride along with a dummy token: see `_next_slots`).
        first = min(r.slot for r in decoding)
        rows = max(r.slot for r in decoding) + 1 - first
        tokens = [0] * rows
        for r in decoding:
            tokens[r.slot - first] = r.pending
        logits = self.decode_step(tokens, self._next_slots(first, first + rows), first_row=first)
        for r in decoding:
            self._held[r.slot].append(r.pending)
        at = [r.slot - first for r in decoding]
        chosen = logits if at == list(range(rows)) else logits[at]
        for i, (r, token) in enumerate(zip(decoding, self._choose(chosen, decoding))):
            r.fed += 1
            self._accept(r, token, chosen[i] if r.logprobs is not None else None)

    def decode_step(self, tokens: list[int], positions: list[int], first_row: int = 0) -> Tensor:
        """One token into each cache row from `first_row` on, at its position: next-token logits (B, V).

        With `static_step` (the default on CUDA) the step always covers every row and the whole cache row, so
        its shapes never change and `torch.compile(mode="reduce-overhead")` captures it as a CUDA graph.
        """
        n = len(tokens)
        if self.static_step:
            every = self._next_slots(0, self.max_batch)
            tokens = [0] * first_row + tokens + [0] * (self.max_batch - first_row - n)
            positions = every[:first_row] + positions + every[first_row + n:]
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)[:, None]
        pos = torch.tensor(positions, dtype=torch.long, device=self.device)[:, None]
        if self.static_step:
            if self._step_fn is None:
                self._step_fn = self._compiled_static_step()
            return self._step_fn(idx, pos)[first_row:first_row + n]
        window = CacheWindow(slice(first_row, first_row + n), max(positions) + 1)
        return self.model(idx, input_pos=pos, window=window)[:, -1]

    def _next_slots(self, start: int, stop: int) -> list[int]:
        """Each row's next unwritten slot (where a running sequence's next token goes). Rows with nothing to feed
        (free, or mid-prefill) get a dummy token there, which the real next write overwrites and which nothing
        attends to before: the step keeps one shape for any mix of rows, and what a row holds stays intact."""
        for held in self._held[start:stop]:
            if len(held) >= self.cache_len:  # a full row: give up its last slot to the dummy writes
                del held[self.cache_len - 1:]
        return [len(held) for held in self._held[start:stop]]

    def _compiled_static_step(self) -> Callable[[Tensor, Tensor], Tensor]:
        window = CacheWindow(slice(0, self.max_batch), self.cache_len)

        def static_step(idx: Tensor, pos: Tensor) -> Tensor:
            return self.model(idx, input_pos=pos, window=window)[:, -1]

        if self.device.type != "cuda":  # CUDA graphs only exist there; on the CPU the eager step is measured faster
            return static_step
        return torch.compile(static_step, mode="reduce-overhead", fullgraph=True)

    # --- choosing tokens ------------------------------------------------------------------------------------
    def _choose(self, logits: Tensor, requests: list[_Request]) -> list[int]:
        """One token per row of logits (n, V), each by its request's parameters and generator."""
        plain = [i for i, r in enumerate(requests) if r.params.greedy and not r.params.penalised]
        out = [0] * len(requests)
        if plain:
            best = (logits if len(plain) == len(requests) else logits[plain]).argmax(-1).tolist()
            for i, token in zip(plain, best):
                out[i] = token
        for i, r in enumerate(requests):
            if i not in plain:
                out[i] = _sample_one(logits[i], r)
        return out

    def _accept(self, r: _Request, token: int, logits: Tensor | None) -> None:
        """Record the chosen token: stream its text, or finish the request (`logits`, the row it was chosen from,
        is needed only for logprobs)."""
        r.generated += 1
        if r.logprobs is not None:
            self._record_logprobs(r, token, logits)
        if r.seen is not None:
            r.seen[token] = True
        if r.counts is not None:
            r.counts[token] += 1
        if token in self.stop_token_ids or token in r.params.stop_token_ids:
            self._finish(r, "stop", r.text.finish(), tokens=[])
            return
        r.output.append(token)
        piece = r.text.add(token)
        if r.text.stopped:
            self._finish(r, "stop", piece, tokens=[token])
        elif r.generated >= r.max_new:
            self._finish(r, "length", piece + r.text.finish(), tokens=[token])
        else:
            r.pending = token
            r.sink(self._event(r, piece, [token], None))

    def _record_logprobs(self, r: _Request, token: int, logits: Tensor) -> None:
        logp = torch.log_softmax(logits.float(), dim=-1)
        r.logprobs.append(float(logp[token]))
        top: dict[str, float] = {}
        if r.params.logprobs:
            values, ids = torch.topk(logp, min(r.params.logprobs, logp.shape[-1]))
            top = {self._token_text(i): v for i, v in zip(ids.tolist(), values.tolist())}
        r.top_logprobs.append(top)

    def _token_text(self, token: int) -> str:
        return self.tokenizer.decode([token], skip_special_tokens=False) if self.tokenizer else str(token)

    def _event(self, r: _Request, text: str, tokens: list[int], finish: str | None) -> TokenEvent:
        n = len(tokens) if tokens else 1
        scored = finish not in ("cancelled", "error")
        lps = r.logprobs[-n:] if r.logprobs is not None and scored else None
        tops = r.top_logprobs[-n:] if r.top_logprobs is not None and scored else None
        return TokenEvent(text=text, token_ids=tokens, logprobs=lps, top_logprobs=tops, finish_reason=finish,
                          prompt_tokens=len(r.prompt), completion_tokens=r.generated)

    def _finish(self, r: _Request, reason: str, piece: str, tokens: list[int] | None = None) -> None:
        r.finish_reason, r.pending = reason, None
        if r.slot >= 0 and self._slots[r.slot] is r:
            self._slots[r.slot] = None  # free at once: the next admission writes a new sequence from slot 0
        r.sink(self._event(r, piece, tokens or [], reason))

    # --- encoder-decoders: static batches on the static-batch functions -------------------------------------
    # The cross-attention cache belongs to a batch, not a slot, so an encoder-decoder runs the waiting requests
    # (up to max_batch) as one batch: encoded together, decoded in step, each retiring at its own end; the next
    # batch starts when the whole batch has finished.
    def _seq2seq_admit(self) -> None:
        if any(r is not None for r in self._slots) or not self._waiting:
            return
        batch = [self._waiting.popleft() for _ in range(min(self.max_batch, len(self._waiting)))]
        for slot, r in enumerate(batch):
            r.slot, self._slots[slot] = slot, r
        new = max(r.max_new for r in batch)
        self._s2s_logits, self._s2s_step, _ = encoder_decoder_start(self.model, [r.prompt for r in batch], new,
                                                                    self.pad_id, self.decoder_start_id)
        self._s2s_batch, self._s2s_t = batch, 0

    def _seq2seq_step(self) -> None:
        batch = self._s2s_batch
        live = [i for i, r in enumerate(batch) if r.finish_reason is None]
        if not live:
            return
        logits = self._s2s_logits[live]
        for i, token, row in zip(live, self._choose(logits, [batch[i] for i in live]), logits):
            self._accept(batch[i], token, row)
        if all(r.finish_reason is not None for r in batch):
            self.model.clear_cache()
            self._s2s_batch = []
            return
        nxt = [r.pending if r.pending is not None else self.pad_id for r in batch]  # finished rows: padding
        self._s2s_logits = self._s2s_step(torch.tensor(nxt, device=self.device), self._s2s_t)
        self._s2s_t += 1

    # --- speculative decoding (greedy): a draft model or n-gram prompt lookup proposes, the model verifies ------
    def _speculates(self, r: _Request) -> bool:
        if self.draft is not None and r.fed + self.num_speculative >= self.draft_len:
            return False  # past the draft's context: plain decoding from here
        return ((self.draft is not None or self.prompt_lookup) and r.params.greedy and not r.params.penalised
                and r.logprobs is None)

    def _speculative_step(self, r: _Request) -> None:
        """Propose up to k tokens, check them in one forward of k + 1 positions, keep the agreeing prefix and
        the model's own next token: exactly the tokens plain greedy decoding gives, often several per forward."""
        room = min(r.max_new - r.generated, self.cache_len - r.fed - 1)
        k = max(0, min(self.num_speculative, room))
        proposal = self._propose(r, k) if k else []
        fed = [r.pending, *proposal]
        logits = self._forward_all(fed, r.slot, r.fed)  # (k + 1, V)
        targets = logits.argmax(-1).tolist()
        accepted = 0
        while accepted < len(proposal) and proposal[accepted] == targets[accepted]:
            accepted += 1
        # The cache now holds `fed`; positions past the accepted ones are overwritten by the next feed.
        for i in range(accepted + 1):
            r.fed += 1
            self._held[r.slot].append(fed[i])
            self._accept(r, targets[i], logits[i])
            if r.finish_reason is not None:
                return

    def _forward_all(self, ids: list[int], slot: int, start: int) -> Tensor:
        """Like `_forward`, but the logits after every fed token: (n, V)."""
        idx = torch.tensor([ids], dtype=torch.long, device=self.device)
        pos = torch.arange(start, start + len(ids), device=self.device)[None]
        return self.model(idx, input_pos=pos, window=CacheWindow(slice(slot, slot + 1), start + len(ids)))[0]

    def _propose(self, r: _Request, k: int) -> list[int]:
        if self.draft is not None:
            return self._draft_propose(r, k)
        return prompt_lookup_proposal(r.sequence, k)

    def _draft_propose(self, r: _Request, k: int) -> list[int]:
        """k greedy tokens of the draft model, its cache caught up with the sequence first."""
        seq = r.sequence  # ends with the pending token
        window = lambda end: CacheWindow(slice(r.slot, r.slot + 1), end)
        start = min(r.draft_fed, len(seq) - 1)
        idx = torch.tensor([seq[start:]], dtype=torch.long, device=self.device)
        pos = torch.arange(start, len(seq), device=self.device)[None]
        nxt = int(self.draft(idx, input_pos=pos, window=window(len(seq)))[0, -1].argmax())
        proposal, at = [nxt], len(seq)
        while len(proposal) < k:
            idx = torch.tensor([[nxt]], device=self.device)
            pos = torch.tensor([[at]], device=self.device)
            nxt = int(self.draft(idx, input_pos=pos, window=window(at + 1))[0, -1].argmax())
            proposal.append(nxt)
            at += 1
        # The draft's cache holds seq and proposal[:-1]; what of it stays valid is known after verification,
        # so count only the sequence itself (the proposal's slots are rewritten when they disagree).
        r.draft_fed = len(seq)
        return proposal

    # --- scoring a prompt -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def prompt_logprobs(self, ids: list[int], top: int = 0) -> list[tuple[float | None, dict[str, float]]]:
        """For each prompt token, its logprob given the ones before (None for the first) and the `top` most
        likely tokens there (for completions' echo). One forward without the cache."""
        if self.seq2seq:
            raise EngineError("prompt logprobs need a decoder: an encoder-decoder does not predict its source",
                              fix="drop echo / logprobs for this model")
        if not ids or len(ids) > self.max_seq_len:
            raise EngineError(f"prompt of {len(ids)} tokens cannot be scored in the model's {self.max_seq_len}-token"
                              f" context", fix="give between 1 and max_seq_len tokens")
        logits = self.model(torch.tensor([ids], device=self.device))[0].float()
        logp = torch.log_softmax(logits, dim=-1)  # (T, V): row t predicts token t + 1
        out: list[tuple[float | None, dict[str, float]]] = [(None, {})]
        for t in range(1, len(ids)):
            alts: dict[str, float] = {}
            if top:
                values, tops = torch.topk(logp[t - 1], min(top, logp.shape[-1]))
                alts = {self._token_text(i): v for i, v in zip(tops.tolist(), values.tolist())}
            out.append((float(logp[t - 1, ids[t]]), alts))
        return out


def packed_runs(chunks: list[tuple[_Request, int]]) -> list[list[tuple[_Request, int]]]:
    """Prompt chunks (request, tokens), in row order, split into runs of neighbouring rows that one right-padded
    forward computes with at most half padding: rows spanned x the longest chunk <= 2 x the tokens fed (greedy,
    left to right; a run may be one chunk)."""
    runs: list[list[tuple[_Request, int]]] = []
    for chunk in chunks:
        if runs:
            run = [*runs[-1], chunk]
            rows = chunk[0].slot + 1 - run[0][0].slot
            if rows * max(n for _, n in run) <= 2 * sum(n for _, n in run):
                runs[-1] = run
                continue
        runs.append([chunk])
    return runs


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prompt_lookup_proposal(sequence: list[int], k: int, max_ngram: int = 3) -> list[int]:
    """n-gram prompt lookup (Saxena 2023, transformers' `prompt_lookup_num_tokens`): find an earlier occurrence
    of the sequence's last n tokens (n = max_ngram down to 1) and propose the k tokens that followed it; the
    latest occurrence with k tokens after it, else the one with the most."""
    n_seq = len(sequence)
    for n in range(min(max_ngram, n_seq - 1), 0, -1):
        tail = sequence[n_seq - n:]
        best: list[int] = []
        for start in range(n_seq - n - 1, -1, -1):
            if sequence[start:start + n] == tail:
                follow = sequence[start + n:start + n + k]
                if len(follow) == k:
                    return follow
                if len(follow) > len(best):
                    best = follow
        if best:
            return best
    return []


def _sample_one(logits: Tensor, r: _Request) -> int:
    """One token from one row's logits (V,), by the request's penalties, temperature, filters and generator."""
    p = r.params
    x = logits.float()
    if r.seen is not None:
        x = apply_repetition_penalty(x, r.seen, p.repetition_penalty)
    if r.counts is not None:
        x = x - p.frequency_penalty * r.counts - p.presence_penalty * (r.counts > 0).float()
    if p.greedy:
        return int(x.argmax())
    x = filter_logits(x[None] / p.temperature, p.top_k, p.top_p, p.min_p)[0]
    probs = x.softmax(-1)
    # argmax(p / E), E ~ Exp(1), draws from p (the exponential race); the noise comes from this request's own
    # generator, so a seeded request draws the same numbers whatever else is in the batch.
    noise = torch.empty_like(probs).exponential_(1.0, generator=r.generator)
    return int((probs / noise).argmax())


def _completion(r: _Request, events: list[TokenEvent]) -> Completion:
    return Completion(text="".join(e.text for e in events), token_ids=list(r.output),
                      finish_reason=r.finish_reason or "cancelled", logprobs=r.logprobs,
                      top_logprobs=r.top_logprobs, prompt_tokens=len(r.prompt), completion_tokens=r.generated)


def _special_ids(tokenizer: Tokenizer | None) -> dict[str, int]:
    if tokenizer is None:
        return {}
    from lmforge.data.tokenizer import special_token_ids

    return special_token_ids(tokenizer)


def _default_stop_ids(tokenizer: Tokenizer | None, specials: dict[str, int]) -> list[int]:
    ids = [specials["eos"]] if "eos" in specials else []
    if tokenizer is not None:
        ids += [i for s in END_OF_TURN if (i := tokenizer.token_to_id(s)) is not None]
    return ids


def _check_draft(draft: nn.Module, draft_tokenizer: Tokenizer | None, model: nn.Module,
                 tokenizer: Tokenizer | None) -> nn.Module:
    """The draft must be a decoder speaking the model's tokenizer: else one line."""
    require(draft.cfg, GENERATE, needed_for="a speculative-decoding draft")
    if kind_of(draft.cfg) != Kind.DECODER or kind_of(model.cfg) != Kind.DECODER:
        raise EngineError("speculative decoding needs a decoder model and a decoder draft",
                          fix="drop the draft for an encoder-decoder")
    same = draft.cfg.vocab_size == model.cfg.vocab_size
    if same and draft_tokenizer is not None and tokenizer is not None:
        same = draft_tokenizer.get_vocab(with_added_tokens=True) == tokenizer.get_vocab(with_added_tokens=True)
    if not same:
        raise EngineError("the draft model uses another tokenizer than the model (its token ids mean other text)",
                          fix="draft with a model trained on the same tokenizer.json, or use prompt lookup")
    return draft.eval()
