"""Generation from prompts: text or token ids, several prompts at once, streaming, stop strings.

Sampling and greedy decoding run on the inference engine (`lmforge.infer.engine`), the one mechanism the CLI,
task evaluation and the server share. Beam search (`beam_search_ids`, num_beams > 1) keeps num_beams rows per
prompt in step on the static-batch prefill and decode functions (`lmforge.infer.static_batch`) and reorders the
cache rows after each step by the chosen beams' parents.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import nn

from lmforge.config import Config, field
from lmforge.errors import UserError
from lmforge.infer.engine import Engine, SamplingParams
from lmforge.infer.sampling import SamplingConfig
from lmforge.infer.static_batch import start
from lmforge.infer.text import TextStream
from lmforge.models.blocks import CrossKVCache, KVCache
from lmforge.models.registry import GENERATE, Kind, families_that, kind_of, require


@dataclass
class BeamSearchConfig(Config):
    """Beam search's options, defined once: `GenerationConfig` (`lmforge generate`) and the verbs that generate
    deterministically for a task (`lmforge eval --task translation / summarisation`, `lmforge predict`) inherit
    them, so each is the same flag with the same default and bounds everywhere. `check_beam_options` refuses the
    beam-only ones without num_beams > 1."""

    num_beams: int = field(1, "beam search with this many beams (1 = off: greedy decoding, or sampling where "
                              "--temperature > 0)", min=1)
    length_penalty: float = field(1.0, "beam search: a finished hypothesis scores sum(log p) / length ** this "
                                       "(> 0 favours longer outputs, < 0 shorter)")
    no_repeat_ngram_size: int = field(0, "beam search: never produce an n-gram of this size twice (0 = off)", min=0)
    early_stopping: bool = field(False, "beam search: stop once num_beams hypotheses have ended (off: stop when no "
                                        "running beam can still beat them, as Hugging Face's heuristic)")

    def beam_options(self) -> BeamSearchConfig:
        """Just these options, of any config that inherits them (an `EvalConfig`, a `PredictOptions`)."""
        return BeamSearchConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(BeamSearchConfig)})


# The options only beam search reads (num_beams > 1); greedy decoding or sampling would silently ignore them.
BEAM_ONLY = ("length_penalty", "no_repeat_ngram_size", "early_stopping")


@dataclass
class GenerationConfig(BeamSearchConfig, SamplingConfig):
    max_new_tokens: int = field(100, "tokens to generate after each prompt", min=1)
    stop: list[str] = field(default_factory=list, repeat=True,
                            help="stop a sequence when it produces this string (repeat the flag for several)")
    seed: int | None = field(None, "random seed for sampling; prompt i uses seed + i, so its text does not depend "
                                   "on the other prompts (default: nondeterministic)")

    @classmethod
    def deterministic(cls, max_new_tokens: int, beams: BeamSearchConfig | None = None) -> GenerationConfig:
        """Greedy decoding, or beam search with `beams`' options (num_beams > 1): how task evaluation and
        prediction generate (`eval.seq2seq.generate_targets`)."""
        chosen = (beams or BeamSearchConfig()).beam_options()
        return cls(temperature=0.0, max_new_tokens=max_new_tokens, **dataclasses.asdict(chosen))


# on_text(row, new_text) is called as text becomes final, for streaming.
TextCallback = Callable[[int, str], None]


def generate_ids(model: nn.Module, prompts: list[list[int]], cfg: GenerationConfig, *, eos_id: int | None = None,
                 pad_id: int = 0, decoder_start_id: int | None = None) -> list[list[int]]:
    """Generate token ids for token-id prompts on the inference engine (`lmforge.infer.engine`).

    A decoder-only model continues each prompt. An encoder-decoder reads each prompt as its source (include the
    `<eos>` it was trained with) and writes a target from `decoder_start_id`. Prompt i samples with seed
    `cfg.seed + i`, so its tokens do not depend on the other prompts. The result holds no EOS.
    """
    _check_can_generate(model, prompts)
    engine = engine_for(model, None, prompts, cfg, eos_id=eos_id, pad_id=pad_id, decoder_start_id=decoder_start_id)
    try:
        return [c.token_ids for c in engine.generate(prompts, sampling_params(cfg, len(prompts)))]
    finally:
        engine.close()


def engine_for(model: nn.Module, tokenizer: Tokenizer | None, prompts: list[list[int]], cfg: GenerationConfig, *,
               eos_id: int | None, pad_id: int, decoder_start_id: int | None,
               speculation: Speculation | None = None) -> Engine:
    """An engine sized for these prompts: a cache row each, as long as the longest prompt plus max_new_tokens."""
    longest = max(len(p) for p in prompts)
    spec = speculation or Speculation()
    return Engine(model, tokenizer, max_batch=len(prompts), cache_len=longest + cfg.max_new_tokens,
                  stop_token_ids=[eos_id] if eos_id is not None else [], pad_id=pad_id,
                  decoder_start_id=decoder_start_id, draft=spec.draft, draft_tokenizer=spec.draft_tokenizer,
                  prompt_lookup=spec.prompt_lookup, num_speculative=spec.num_speculative)


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding for greedy requests: a draft model of the same tokenizer, or n-gram prompt lookup."""

    draft: nn.Module | None = None
    draft_tokenizer: Tokenizer | None = None
    prompt_lookup: bool = False
    num_speculative: int = 4


def sampling_params(cfg: GenerationConfig, n: int) -> list[SamplingParams]:
    """The engine's per-request parameters for n prompts generated with `cfg` (prompt i seeded cfg.seed + i)."""
    return [SamplingParams(max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           top_k=cfg.top_k, min_p=cfg.min_p, repetition_penalty=cfg.repetition_penalty,
                           seed=None if cfg.seed is None else cfg.seed + i, stop=tuple(cfg.stop))
            for i in range(n)]


def _check_can_generate(model: nn.Module, prompts: list[list[int]]) -> bool:
    """Refuse a model that cannot generate, or an empty prompt, in one line; True for an encoder-decoder."""
    require(model.cfg, GENERATE, needed_for="generation",
            fix=f"generate from a {', '.join(f.name for f in families_that(GENERATE))} language model (lstm models "
                "are scored by `lmforge eval`, bert ones embed or export with `lmforge embed` / `lmforge export`, "
                "classifiers report their scores in the run's metrics)")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("empty prompt after tokenisation", fix="give at least one token (or let the caller add EOS)")
    return kind_of(model.cfg) == Kind.ENCODER_DECODER


# Sampling options beam search has no use for, with the values that leave them off.
_SAMPLING_OFF = {"temperature": (SamplingConfig.temperature, 0.0), "top_k": (0,), "top_p": (1.0,), "min_p": (0.0,),
                 "repetition_penalty": (1.0,)}


def check_beam_options(cfg: BeamSearchConfig) -> None:
    """One line of error for options that would be silently ignored: a beam-only option (`BEAM_ONLY`) without
    num_beams > 1, or (for a `GenerationConfig`) a sampling option with it, as beam search is deterministic."""
    if cfg.num_beams <= 1:
        defaults = {f.name: f.default for f in dataclasses.fields(BeamSearchConfig)}
        given = [f"--{name.replace('_', '-')}" for name in BEAM_ONLY if getattr(cfg, name) != defaults[name]]
        if given:
            one = len(given) == 1
            raise UserError(f"{', '.join(given)} only appl{'ies' if one else 'y'} with --num-beams N (N > 1)",
                            fix=f"add --num-beams N, or leave {'it' if one else 'them'} out")
        return
    given = [f"--{name.replace('_', '-')} {getattr(cfg, name)}" for name, off in _SAMPLING_OFF.items()
             if hasattr(cfg, name) and getattr(cfg, name) not in off]
    if given:
        raise UserError(f"--num-beams {cfg.num_beams} searches deterministically; {', '.join(given)} only "
                        f"shape sampling", fix="drop them, or sample with --num-beams 1")


@torch.inference_mode()
def beam_search_ids(model: nn.Module, prompts: list[list[int]], cfg: GenerationConfig, *,
                    eos_id: int | None = None, pad_id: int = 0,
                    decoder_start_id: int | None = None) -> list[list[int]]:
    """The best of `cfg.num_beams` beams for each prompt, as Hugging Face's `generate(num_beams=...)` finds it.

    Each prompt gets num_beams rows of the cache. A step scores every (beam, token) continuation by the sum of
    log-probabilities, keeps the best 2 * num_beams, moves those ending in `eos_id` (among the best num_beams)
    to the prompt's finished hypotheses, scored sum / length ** length_penalty (length counts generated tokens,
    EOS included), and continues the best num_beams others; the cache rows follow their parents. At
    max_new_tokens the running beams finish too. `no_repeat_ngram_size` bans a token that would repeat an n-gram
    of the prompt (a decoder's) or of the output. Same prompts and options as `generate_ids`; the result holds
    no EOS.
    """
    check_beam_options(cfg)
    encoder_decoder = _check_can_generate(model, prompts)
    device = next(model.parameters()).device
    B, N, V = len(prompts), cfg.num_beams, model.cfg.vocab_size
    K = 2 * N  # enough candidates for N to go on when up to N of them end in EOS
    try:
        logits, step, new = start(model, [p for p in prompts for _ in range(N)], cfg.max_new_tokens, pad_id,
                                   decoder_start_id)
        caches = [m for m in model.modules() if isinstance(m, KVCache | CrossKVCache)]
        # Text an n-gram must not repeat, per row: a decoder's prompt, or an encoder-decoder's start token.
        history = [([decoder_start_id] if encoder_decoder else list(p)) for p in prompts for _ in range(N)]
        running = torch.full((B, N, new), -1, dtype=torch.long, device=device)  # generated tokens per beam
        run_scores = torch.zeros(B, N, device=device)
        run_scores[:, 1:] = -1e9  # the beams start equal: only the first one's continuations count at step 0
        done_seqs = running.clone()
        done_scores = torch.full((B, N), -1e9, device=device)
        finished = torch.zeros(B, N, dtype=torch.bool, device=device)
        improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
        first_n = torch.arange(K, device=device) < N
        offsets = torch.arange(B, device=device)[:, None] * N
        for t in range(new):
            logp = torch.log_softmax(logits.float(), dim=-1)
            if cfg.no_repeat_ngram_size:
                logp = _ban_repeated_ngrams(logp, history, cfg.no_repeat_ngram_size)
            total = (logp.view(B, N, V) + run_scores[:, :, None]).view(B, N * V)
            top_scores, top = torch.topk(total, K)  # (B, K)
            parents, tokens = top // V, top % V
            cand = running.gather(1, parents[:, :, None].expand(B, K, new)).clone()
            cand[:, :, t] = tokens
            ends = tokens == eos_id if eos_id is not None else torch.zeros_like(tokens, dtype=torch.bool)
            if t + 1 == new:
                ends = torch.ones_like(ends)
            # The best N candidates that go on.
            go_scores = top_scores + ends.float() * -1.0e9
            keep = torch.topk(go_scores, N).indices  # (B, N)
            running = cand.gather(1, keep[:, :, None].expand(B, N, new))
            run_scores = go_scores.gather(1, keep)
            rows = (parents.gather(1, keep) + offsets).view(-1)
            # Candidates among the best N that ended join the finished hypotheses, while they can still count.
            just = ends & first_n[None, :]
            scores = top_scores / ((t + 1) ** cfg.length_penalty)
            full = finished.all(-1, keepdim=True) & cfg.early_stopping
            scores = scores + full.float() * -1.0e9 + (~improvable).float() * -1.0e9 + (~just).float() * -1.0e9
            merged = torch.cat((done_scores, scores), dim=1)
            best = torch.topk(merged, N).indices
            done_scores = merged.gather(1, best)
            done_seqs = torch.cat((done_seqs, cand), dim=1).gather(1, best[:, :, None].expand(B, N, new))
            finished = torch.cat((finished, just), dim=1).gather(1, best)
            # Hugging Face's heuristic: can the best running beam, at its current length, beat the worst finished?
            possible = run_scores[:, :1] / ((t + 1) ** cfg.length_penalty)
            worst = torch.where(finished, done_scores.min(dim=1, keepdim=True).values, -1.0e9)
            improvable = improvable & (possible > worst).any(-1, keepdim=True)
            if (not bool(improvable.any()) or (cfg.early_stopping and bool(finished.all()))
                    or bool(ends.all()) or t + 1 == new):
                break
            for c in caches:
                c.reorder(rows)
            # (The encoder memory and its mask need no reordering: a beam's parent is always of the same
            # prompt, whose rows of them are equal.)
            nxt = running[:, :, t].reshape(-1)
            if cfg.no_repeat_ngram_size:
                history = [[*history[r], tok] for r, tok in zip(rows.tolist(), nxt.tolist())]
            logits = step(nxt, t)
    finally:
        model.clear_cache()
    result = []
    for row in done_seqs[:, 0].tolist():
        cut = next((i for i, tok in enumerate(row) if tok == -1 or tok == eos_id), len(row))
        result.append(row[:cut])
    return result


def _ban_repeated_ngrams(logp: torch.Tensor, history: list[list[int]], n: int) -> torch.Tensor:
    """-inf for each row's tokens that would complete an n-gram the row already holds (transformers'
    NoRepeatNGramLogitsProcessor)."""
    banned_rows, banned_tokens = [], []
    for r, seq in enumerate(history):
        if len(seq) + 1 < n:
            continue
        key = seq[len(seq) - n + 1:]
        for i in range(len(seq) - n + 1):
            if seq[i:i + n - 1] == key:
                banned_rows.append(r)
                banned_tokens.append(seq[i + n - 1])
    if banned_rows:
        logp = logp.clone()
        logp[banned_rows, banned_tokens] = float("-inf")
    return logp


def generate(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], cfg: GenerationConfig, *,
             special_ids: dict[str, int] | None = None, on_text: TextCallback | None = None,
             on_notice: Callable[[str], None] | None = None, speculation: Speculation | None = None) -> list[str]:
    """Text for each prompt: a decoder's continuation, or an encoder-decoder's output for it as source (a
    translation, a summary, a filled-in span). `on_text(row, piece)` streams text as it is produced;
    `on_notice(line)` hears, once, that a sequence went past the length the model was trained at; `speculation`
    speeds up greedy decoding (same output)."""
    from lmforge.data.tokenizer import decoder_start_id, encode_ids

    special_ids = special_ids or {}
    eos_id, pad_id = special_ids.get("eos"), special_ids.get("pad", 0)
    encoded = [encode_ids(tokenizer, p) for p in prompts]
    start = None
    if kind_of(model.cfg) == Kind.ENCODER_DECODER:
        if any(not ids for ids in encoded):
            raise UserError("an encoder-decoder needs a source text to generate from; a prompt is empty",
                            fix="pass the text to translate, summarise or complete")
        # Sources as trained (`source <eos>`), the decoder started as trained.
        encoded = [[*ids, eos_id] if eos_id is not None else ids for ids in encoded]
        try:
            start = decoder_start_id(special_ids)
        except KeyError:
            raise UserError("the tokenizer has no <pad>, <bos> or <eos> to start the decoder with",
                            fix="generate with the tokenizer the model was trained with") from None
    else:
        # Documents start right after an EOS in training data, so an empty prompt starts a new one.
        encoded = [ids or ([eos_id] if eos_id is not None else []) for ids in encoded]
    if cfg.num_beams > 1:  # the best beam is known only at the end: its text comes in one piece
        ids = beam_search_ids(model, encoded, cfg, eos_id=eos_id, pad_id=pad_id, decoder_start_id=start)
        texts = [_whole_text(tokenizer, row, cfg.stop) for row in ids]
    else:
        _check_can_generate(model, encoded)
        engine = engine_for(model, tokenizer, encoded, cfg, eos_id=eos_id, pad_id=pad_id, decoder_start_id=start,
                            speculation=speculation)
        try:
            done = engine.generate(encoded, sampling_params(cfg, len(encoded)),
                                   on_event=(lambda i, ev: ev.text and on_text(i, ev.text)) if on_text else None)
        finally:
            engine.close()
        ids, texts = [c.token_ids for c in done], [c.text for c in done]
    if on_notice is not None and start is None:
        notice = past_trained_context(model.cfg, [len(p) + len(row) for p, row in zip(encoded, ids)])
        if notice:
            on_notice(notice)
    return texts


def _whole_text(tokenizer: Tokenizer, ids: list[int], stop: list[str]) -> str:
    """The text of a finished output, cut before its first stop string."""
    stream = TextStream(tokenizer, tuple(stop))
    return "".join(stream.add(t) for t in ids) + stream.finish()


def past_trained_context(cfg, lengths: list[int]) -> str | None:
    """One line when a decoder's sequence (prompt + output, in tokens) went past the length it was trained at.

    A warning, not a stop: the positions up to max_seq_len exist and were asked for, and where text stops making
    sense varies; cutting there would silently drop output. The line says where and how to stay within.
    """
    trained = cfg.trained_seq_len
    longest = max(lengths, default=0)
    if not trained or longest <= trained:
        return None
    return (f"warning: generation went past the {trained} tokens this model was trained at (to {longest} of its "
            f"{cfg.max_seq_len} positions); text after that is unreliable (fix: fewer --max-new-tokens, or train "
            f"with a longer --seq-len)")
