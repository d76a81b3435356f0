"""The inference engine: cached, batched, continuously batched, static-step and speculative paths all give the
greedy tokens of a full recompute; seeded sampling does not depend on the batch; streaming, stop strings,
cancellation and bad requests."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
import torch
from tokenizers import Tokenizer, models

from lmforge.infer.engine import Engine, EngineError, SamplingParams, prompt_lookup_proposal
from lmforge.models import DecoderLM, ModelConfig, build_model, get_preset

GREEDY = dict(temperature=0.0)
FAMILIES = {
    "gpt": dict(),
    "llama": dict(pos="rope", norm="rmsnorm", mlp="gated", activation="silu", n_kv_head=2, bias=False),
}


def model_of(**kw) -> DecoderLM:
    torch.manual_seed(0)
    base = dict(vocab_size=300, max_seq_len=64, n_layer=2, n_head=4, d_model=32)
    return DecoderLM(ModelConfig(**{**base, **kw})).eval()


@torch.no_grad()
def recompute_greedy(model: DecoderLM, prompt: list[int], n: int, stop_id: int | None = None) -> list[int]:
    """The reference: recompute the whole sequence for every new token, no cache."""
    seq = list(prompt)
    for _ in range(n):
        nxt = int(model(torch.tensor([seq]))[0, -1].argmax())
        if nxt == stop_id:
            break
        seq.append(nxt)
    return seq[len(prompt):]


PROMPTS = [[5, 17, 42, 8], [9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], [7, 7], [3, 1, 4, 1, 5, 9, 2, 6]]
LENGTHS = [12, 5, 9, 14, 3]


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("max_batch,chunk", [(1, 512), (2, 3), (8, 512)])
def test_continuous_batching_gives_the_full_recompute_greedy_tokens(family, max_batch, chunk):
    """Mixed lengths, fewer slots than requests (slots reused at once), prompts prefilled in chunks."""
    model = model_of(**FAMILIES[family])
    engine = Engine(model, None, max_batch=max_batch, prefill_chunk=chunk, stop_token_ids=[])
    params = [SamplingParams(max_tokens=n, **GREEDY) for n in LENGTHS]
    done = engine.generate(PROMPTS, params)
    for prompt, n, c in zip(PROMPTS, LENGTHS, done):
        assert c.token_ids == recompute_greedy(model, prompt, n)
        assert (c.finish_reason, c.completion_tokens, c.prompt_tokens) == ("length", n, len(prompt))
    assert engine.running == engine.waiting == 0


def test_requests_admitted_between_decode_steps_do_not_change_running_ones():
    model = model_of(**FAMILIES["llama"])
    engine = Engine(model, None, max_batch=4, stop_token_ids=[])
    events: dict[str, list] = {}
    first = engine.submit(PROMPTS[0], SamplingParams(max_tokens=12, **GREEDY),
                          sink=lambda e: events.setdefault("a", []).append(e))
    for _ in range(4):
        engine.step()
    engine.submit(PROMPTS[2], SamplingParams(max_tokens=6, **GREEDY),
                  sink=lambda e: events.setdefault("b", []).append(e))
    while engine.busy:
        engine.step()
    assert first.request_id.startswith("req-")
    assert [t for e in events["a"] for t in e.token_ids] == recompute_greedy(model, PROMPTS[0], 12)
    assert [t for e in events["b"] for t in e.token_ids] == recompute_greedy(model, PROMPTS[2], 6)


def test_a_stop_token_ends_a_request_and_its_slot_is_reused():
    model = model_of()
    free = recompute_greedy(model, PROMPTS[2], 10)
    k = next(i for i in range(1, len(free)) if free[i] not in free[:i])  # the first token not seen before
    engine = Engine(model, None, max_batch=1, stop_token_ids=[free[k]])
    a, b = engine.generate([PROMPTS[2], PROMPTS[1]], SamplingParams(max_tokens=10, **GREEDY))
    assert a.token_ids == free[:k] and a.finish_reason == "stop" and a.completion_tokens == k + 1
    assert b.token_ids == recompute_greedy(model, PROMPTS[1], 10, stop_id=free[k])


def test_output_is_cut_where_the_context_ends():
    model = model_of()
    (c,) = Engine(model, None, stop_token_ids=[]).generate([[1, 2]], SamplingParams(max_tokens=500, **GREEDY))
    assert len(c.token_ids) == 62 and c.finish_reason == "length"


def test_seeded_sampling_gives_the_same_tokens_alone_or_batched():
    model = model_of()
    params = SamplingParams(max_tokens=15, temperature=1.0, top_k=50, top_p=0.9, seed=123)
    alone = Engine(model, None, stop_token_ids=[]).generate([PROMPTS[0]], params)[0].token_ids
    others = [SamplingParams(max_tokens=n, temperature=0.7, seed=i) for i, n in enumerate(LENGTHS[1:])]
    batched = Engine(model, None, max_batch=3, stop_token_ids=[]).generate(PROMPTS, [params, *others])
    assert batched[0].token_ids == alone
    again = Engine(model, None, stop_token_ids=[]).generate([PROMPTS[0]], params)[0].token_ids
    assert again == alone
    other_seed = Engine(model, None, stop_token_ids=[]).generate(
        [PROMPTS[0]], SamplingParams(max_tokens=15, temperature=1.0, top_k=50, top_p=0.9, seed=124))[0].token_ids
    assert other_seed != alone


def test_the_static_step_gives_the_same_tokens_as_the_dynamic_one():
    """The CUDA-graph step's shapes (every row, the whole cache row), run eagerly on the CPU."""
    model = model_of(**FAMILIES["llama"])
    params = [SamplingParams(max_tokens=n, **GREEDY) for n in LENGTHS]
    static = Engine(model, None, max_batch=3, static_step=True, stop_token_ids=[]).generate(PROMPTS, params)
    assert [c.token_ids for c in static] == [recompute_greedy(model, p, n) for p, n in zip(PROMPTS, LENGTHS)]


@pytest.mark.parametrize("how", ["prompt_lookup", "draft"])
def test_speculative_decoding_gives_plain_greedy_tokens(how):
    model = model_of(**FAMILIES["llama"])
    repetitive = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    if how == "draft":
        torch.manual_seed(1)
        draft = DecoderLM(ModelConfig(vocab_size=300, max_seq_len=64, n_layer=1, n_head=2, d_model=16)).eval()
        engine = Engine(model, None, draft=draft, num_speculative=3, stop_token_ids=[])
    else:
        engine = Engine(model, None, prompt_lookup=True, num_speculative=3, stop_token_ids=[])
    for prompt in (repetitive, PROMPTS[0]):
        (c,) = engine.generate([prompt], SamplingParams(max_tokens=20, **GREEDY))
        assert c.token_ids == recompute_greedy(model, prompt, 20)


def test_speculation_with_the_model_as_its_own_draft_accepts_everything():
    model = model_of()
    engine = Engine(model, None, draft=model_of(), num_speculative=4, stop_token_ids=[])
    forwards = []
    handle = model.register_forward_hook(lambda *_: forwards.append(1))
    (c,) = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=16, **GREEDY))
    handle.remove()
    assert c.token_ids == recompute_greedy(model, PROMPTS[0], 16)
    assert len(forwards) <= 1 + 16 // 5 + 1  # prefill, then 5 tokens per verifying forward


def test_prompt_lookup_proposes_what_followed_the_latest_match():
    assert prompt_lookup_proposal([1, 2, 3, 9, 1, 2, 3, 7, 1, 2, 3], 2) == [7, 1]
    assert prompt_lookup_proposal([4, 5, 6], 3) == []
    # A repeating output: the latest match is right behind the tail, so the one with k tokens after it wins.
    assert prompt_lookup_proposal([8, 5, 8, 5, 8, 5, 8, 5], 3) == [8, 5, 8]
    assert prompt_lookup_proposal([1, 2, 7, 1, 2], 4) == [7, 1, 2]


def test_an_encoder_decoder_runs_through_the_same_api():
    cfg = ModelConfig(**{**get_preset("t5-tiny").to_dict(), "vocab_size": 97, "max_seq_len": 32, "n_layer": 1,
                         "n_decoder_layer": 1, "d_model": 32, "n_head": 2, "n_kv_head": 2, "head_dim": 16,
                         "d_ff": 48})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    sources = [[5, 6, 7, 1], [9, 10, 1], [11, 1], [12, 13, 14, 15, 1]]
    lengths = [6, 3, 5, 4]

    def reference(src: list[int], n: int) -> list[int]:
        tgt = [0]
        with torch.no_grad():
            for _ in range(n):
                tgt.append(int(model(torch.tensor([src]), torch.tensor([tgt]))[0, -1].argmax()))
        return tgt[1:]

    for max_batch in (1, 3):  # batches of one, and of three then one, each request retiring at its own length
        done = Engine(model, None, max_batch=max_batch, decoder_start_id=0, stop_token_ids=[]).generate(
            sources, [SamplingParams(max_tokens=n, **GREEDY) for n in lengths])
        assert [c.token_ids for c in done] == [reference(s, n) for s, n in zip(sources, lengths)]


# --- text: streaming, stop strings, logprobs ---------------------------------------------------------------

def test_streamed_events_make_the_completion_and_stop_strings_cut(byte_tokenizer):
    model = model_of(vocab_size=byte_tokenizer.get_vocab_size())
    prompt = byte_tokenizer.encode("the cat").ids
    engine = Engine(model, byte_tokenizer)
    (full,) = engine.generate([prompt], SamplingParams(max_tokens=30, **GREEDY))
    stop = next(full.text[i:i + 2] for i in range(3, len(full.text)) if full.text[i:i + 2].strip())
    events = []
    (cut,) = engine.generate([prompt], SamplingParams(max_tokens=30, stop=(stop,), logprobs=2, **GREEDY),
                             on_event=lambda _i, e: events.append(e))
    assert cut.text == full.text[: full.text.find(stop)] == "".join(e.text for e in events)
    assert cut.finish_reason == "stop" and events[-1].finish_reason == "stop"
    assert all(e.finish_reason is None for e in events[:-1])
    assert len(cut.logprobs) == cut.completion_tokens and all(len(t) == 2 for t in cut.top_logprobs)
    assert all(max(t.values()) == pytest.approx(lp, abs=1e-5) for t, lp in zip(cut.top_logprobs, cut.logprobs))


def test_prompt_logprobs_score_each_token_given_the_ones_before():
    model = model_of()
    ids = [5, 17, 42, 8]
    got = Engine(model, None).prompt_logprobs(ids, top=3)
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0], -1)
    assert got[0] == (None, {})
    assert [lp for lp, _ in got[1:]] == pytest.approx([float(logp[t - 1, ids[t]]) for t in range(1, 4)], abs=1e-5)
    assert all(len(alts) == 3 for _, alts in got[1:])


# --- asyncio: streams and cancellation ---------------------------------------------------------------------

def test_async_streams_and_cancel_frees_the_slot():
    model = model_of()

    async def main():
        engine = Engine(model, None, max_batch=1, stop_token_ids=[])
        await engine.start()
        try:
            long = engine.submit(PROMPTS[0], SamplingParams(max_tokens=60, **GREEDY))
            short = engine.submit(PROMPTS[1], SamplingParams(max_tokens=5, **GREEDY))
            got = []
            async for event in long:
                got.append(event)
                if len(got) == 3:
                    long.cancel()
            tokens = [t async for e in short for t in e.token_ids]
            return got, tokens, engine.running, engine.waiting
        finally:
            await engine.stop()

    got, tokens, running, waiting = asyncio.run(main())
    assert got[-1].finish_reason == "cancelled" and len(got) < 60
    assert tokens == recompute_greedy(model, PROMPTS[1], 5)  # it waited for the only slot, which was freed
    assert running == waiting == 0


def test_leaving_the_async_iterator_cancels_the_request():
    model = model_of()

    async def main():
        engine = Engine(model, None, max_batch=1, stop_token_ids=[])
        await engine.start()
        try:
            stream = engine.submit(PROMPTS[0], SamplingParams(max_tokens=60, **GREEDY))
            events = stream.__aiter__()
            await events.__anext__()
            await events.aclose()
            for _ in range(200):
                if engine.running == 0:
                    break
                await asyncio.sleep(0.01)
            return engine.running
        finally:
            await engine.stop(drain=False)

    assert asyncio.run(main()) == 0


# --- bad requests: one line each ---------------------------------------------------------------------------

@pytest.mark.parametrize("params,match", [
    (SamplingParams(max_tokens=0), "max_tokens must be a positive"),
    (SamplingParams(max_tokens=-3), "max_tokens must be a positive"),
    (SamplingParams(stop=(3,)), "stop must be a string or a list of strings"),
    (SamplingParams(stop=("",)), "empty stop string"),
    (SamplingParams(top_p=0.0), "top_p 0.0 is out of range"),
])
def test_bad_sampling_params_are_one_line(params, match):
    with pytest.raises(EngineError, match=match) as err:
        Engine(model_of(), None).submit([1, 2], params)
    assert "\n" not in str(err.value) and "fix:" in str(err.value)


def test_a_prompt_longer_than_the_context_is_refused():
    with pytest.raises(EngineError, match="prompt of 64 tokens does not fit the model's 64-token context"):
        Engine(model_of(), None).submit(list(range(64)), SamplingParams())


def test_a_draft_with_another_tokenizer_is_refused(byte_tokenizer):
    model = model_of()
    with pytest.raises(EngineError, match="draft model uses another tokenizer"):
        Engine(model, None, draft=model_of(vocab_size=512))
    other = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    with pytest.raises(EngineError, match="draft model uses another tokenizer"):
        Engine(model, byte_tokenizer, draft=model_of(), draft_tokenizer=other)


def test_a_cancelled_waiting_request_finishes_cancelled_without_running():
    engine = Engine(model_of(), None, max_batch=1, stop_token_ids=[])
    events = []
    engine.submit(PROMPTS[0], SamplingParams(max_tokens=5, **GREEDY))
    waiting = engine.submit(PROMPTS[1], SamplingParams(max_tokens=5, **GREEDY), sink=events.append)
    engine.step()
    waiting.cancel()
    engine.step()
    assert [(e.finish_reason, e.completion_tokens) for e in events] == [("cancelled", 0)]


def test_a_failing_step_ends_the_streams_with_an_error_instead_of_hanging(monkeypatch):
    model = model_of()

    async def main():
        engine = Engine(model, None, stop_token_ids=[])
        monkeypatch.setattr(engine, "decode_step", lambda *_, **__: (_ for _ in ()).throw(RuntimeError("oom")))
        await engine.start()
        try:
            return [e async for e in engine.submit(PROMPTS[0], SamplingParams(max_tokens=5, **GREEDY))]
        finally:
            await engine.stop()

    events = asyncio.run(main())
    assert events[-1].finish_reason == "error" and "oom" in events[-1].error


def test_stop_without_draining_cancels_what_is_in_flight():
    model = model_of()

    async def main():
        engine = Engine(model, None, max_batch=1, stop_token_ids=[])
        await engine.start()
        streams = [engine.submit(p, SamplingParams(max_tokens=60, **GREEDY)) for p in PROMPTS[:3]]
        await engine.stop(drain=False)
        return [[e async for e in s][-1].finish_reason for s in streams], engine.running, engine.waiting

    reasons, running, waiting = asyncio.run(main())
    assert set(reasons) <= {"cancelled", "length"} and "cancelled" in reasons
    assert running == waiting == 0


def test_a_draft_with_a_shorter_context_hands_over_to_plain_decoding():
    model = model_of()
    torch.manual_seed(1)
    draft = DecoderLM(ModelConfig(vocab_size=300, max_seq_len=16, n_layer=1, n_head=2, d_model=16)).eval()
    engine = Engine(model, None, draft=draft, num_speculative=3, stop_token_ids=[])
    (c,) = engine.generate([PROMPTS[0]], SamplingParams(max_tokens=30, **GREEDY))
    assert c.token_ids == recompute_greedy(model, PROMPTS[0], 30)


@torch.no_grad()
def test_penalties_follow_their_definitions_in_a_batch():
    """Repetition penalty over prompt + output (CTRL), presence / frequency over the output (OpenAI), greedy."""
    from lmforge.infer.sampling import apply_repetition_penalty

    model = model_of()
    rep = SamplingParams(max_tokens=10, temperature=0.0, repetition_penalty=1.5)
    pres = SamplingParams(max_tokens=10, temperature=0.0, presence_penalty=0.7, frequency_penalty=0.4)
    got = Engine(model, None, max_batch=2, stop_token_ids=[]).generate([PROMPTS[0], PROMPTS[3]], [rep, pres])

    def reference(prompt, adjust):
        seq = list(prompt)
        for _ in range(10):
            seq.append(int(adjust(model(torch.tensor([seq]))[0, -1], seq).argmax()))
        return seq[len(prompt):]

    def repetition(logits, seq):
        seen = torch.zeros(300, dtype=torch.bool)
        seen[seq] = True
        return apply_repetition_penalty(logits, seen, 1.5)

    def presence(logits, seq):
        counts = torch.bincount(torch.tensor(seq[len(PROMPTS[3]):], dtype=torch.long), minlength=300).float()
        return logits - 0.4 * counts - 0.7 * (counts > 0).float()

    assert got[0].token_ids == reference(PROMPTS[0], repetition)
    assert got[1].token_ids == reference(PROMPTS[3], presence)
    assert got[0].token_ids != recompute_greedy(model, PROMPTS[0], 10)


@pytest.mark.parametrize("max_batch", [1, 3])
def test_prefix_caching_reuses_a_shared_prompt_start_and_changes_no_token(max_batch):
    model = model_of(**FAMILIES["llama"])
    system = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22]
    prompts = [system + [5, 6], system + [7], [99, 98], system[:6] + [8, 9], system + [5, 6]]
    # Reused per request, three rows: none; the 12 system tokens (copied to a free row, the first prompt's row
    # keeps all it holds); none; 6 of them; all but the last token of the first prompt, which its row still
    # holds. One row holds only the latest sequence: [99, 98] shares nothing with the next, which shares 6.
    want = [0, 12, 0, 6, 13] if max_batch > 1 else [0, 12, 0, 0, 6]
    engine = Engine(model, None, max_batch=max_batch, stop_token_ids=[])
    params = SamplingParams(max_tokens=6, **GREEDY)
    reused, outputs = [], []
    for prompt in prompts:
        before = engine.prefix_tokens_reused
        outputs.append(engine.generate([prompt], params)[0].token_ids)
        reused.append(engine.prefix_tokens_reused - before)
    assert outputs == [recompute_greedy(model, p, 6) for p in prompts]
    assert reused == want
    together = Engine(model, None, max_batch=max_batch, stop_token_ids=[]).generate(prompts, params)
    assert [c.token_ids for c in together] == outputs
    off = Engine(model, None, max_batch=max_batch, stop_token_ids=[], prefix_cache=False)
    assert [c.token_ids for c in off.generate(prompts, params)] == outputs and off.prefix_tokens_reused == 0


class PacedEngine(Engine):
    """The real engine, 5 ms a step: a stream of 62 tokens then lasts long enough to be cancelled midway however
    fast the machine."""

    def step(self) -> None:
        super().step()
        time.sleep(0.005)


def test_cancelling_the_consuming_task_frees_the_slot_for_concurrent_streams():
    model = model_of()

    async def main():
        engine = PacedEngine(model, None, max_batch=2, stop_token_ids=[])
        await engine.start()
        try:
            started = asyncio.Event()

            async def consume(prompt, n, first=None):
                tokens = []
                async for e in engine.submit(prompt, SamplingParams(max_tokens=n, **GREEDY)):
                    tokens += e.token_ids
                    if first is not None:
                        first.set()
                return tokens

            stuck = asyncio.create_task(consume(PROMPTS[0], 62, started))
            await started.wait()
            running_at_cancel = engine.running
            stuck.cancel()  # as a server does when the client goes away, midway through the stream
            outputs = await asyncio.gather(*(consume(p, 6) for p in PROMPTS[1:]))
            for _ in range(200):
                if engine.running == 0:
                    break
                await asyncio.sleep(0.01)
            with contextlib.suppress(asyncio.CancelledError):
                await stuck
            return running_at_cancel, stuck.cancelled(), outputs, engine.running
        finally:
            await engine.stop()

    running_at_cancel, cancelled, outputs, running = asyncio.run(main())
    assert running_at_cancel == 1 and cancelled and running == 0
    assert outputs == [recompute_greedy(model, p, 6) for p in PROMPTS[1:]]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_prompts_prefilled_together_give_the_full_recompute_tokens(family, monkeypatch):
    """Chunks of several prompts in one right-padded forward, while another row decodes."""
    model = model_of(**FAMILIES[family])
    engine = Engine(model, None, max_batch=4, prefill_chunk=64, stop_token_ids=[])
    packed = []
    forward_rows = engine._forward_rows
    monkeypatch.setattr(engine, "_forward_rows", lambda *a: packed.append(a[1:]) or forward_rows(*a))
    prompts = [[5, 17, 42, 8, 3, 3], [9, 8, 7, 6], [1, 2, 3, 4, 5], [40, 41, 42, 43, 44, 45, 46]]
    events: dict[int, list[int]] = {}
    engine.submit(prompts[0], SamplingParams(max_tokens=30, **GREEDY),
                  sink=lambda e: events.setdefault(0, []).extend(e.token_ids))
    engine.step()  # the first one runs alone, then three arrive together
    for i, p in enumerate(prompts[1:], start=1):
        engine.submit(p, SamplingParams(max_tokens=8, **GREEDY),
                      sink=lambda e, i=i: events.setdefault(i, []).extend(e.token_ids))
    while engine.busy:
        engine.step()
    assert packed and packed[0][:2] == (1, 4)  # rows 1..3 in one forward
    assert [events[i] for i in range(4)] == [recompute_greedy(model, p, n) for p, n in zip(prompts, [30, 8, 8, 8])]


def test_a_short_prompt_admitted_behind_a_long_one_gets_its_first_token_in_its_first_step():
    """Shortest remaining prefill first: the long prompt's chunks do not hold a new short prompt back."""
    model = model_of()
    engine = Engine(model, None, max_batch=2, prefill_chunk=8, stop_token_ids=[])
    long_prompt, short_prompt = list(range(3, 43)), [5, 17, 42]
    got: dict[str, list[int]] = {"long": [], "short": []}
    engine.submit(long_prompt, SamplingParams(max_tokens=4, **GREEDY), sink=lambda e: got["long"].extend(e.token_ids))
    engine.step()  # 8 of its 40 tokens
    engine.submit(short_prompt, SamplingParams(max_tokens=4, **GREEDY),
                  sink=lambda e: got["short"].extend(e.token_ids))
    engine.step()
    assert len(got["short"]) == 2  # its first token from the prefill, its second from the same step's decode
    assert got["long"] == []  # still prefilling, with the 5 tokens of the budget the short prompt left
    while engine.busy:
        engine.step()
    assert got["long"] == recompute_greedy(model, long_prompt, 4)
    assert got["short"] == recompute_greedy(model, short_prompt, 4)


def test_prompts_admitted_into_scattered_rows_are_prefilled_in_one_forward_per_run_of_rows(monkeypatch):
    """Free rows 0, 1 and 8, 9 between running ones: two padded forwards, not one per prompt, then the decode."""
    model = model_of()
    engine = Engine(model, None, max_batch=10, stop_token_ids=[], prefix_cache=False)
    lengths = [1, 1, 20, 20, 20, 20, 20, 20, 1, 1]  # rows 0, 1, 8 and 9 finish after their first token
    for i, n in enumerate(lengths):
        engine.submit([3 + i, 4 + i], SamplingParams(max_tokens=n, **GREEDY))
    engine.step()
    assert [r is None for r in engine._slots] == [True, True] + [False] * 6 + [True, True]
    forwards = []
    hidden = model.hidden
    monkeypatch.setattr(model, "hidden", lambda idx, **kw: forwards.append(tuple(idx.shape)) or hidden(idx, **kw))
    prompts = [[7, 8, 9, 10, 11], [12, 13, 14, 15, 16], [17, 18, 19, 20, 21], [22, 23, 24, 25, 26]]
    got: dict[int, list[int]] = {i: [] for i in range(4)}
    for i, p in enumerate(prompts):
        engine.submit(p, SamplingParams(max_tokens=3, **GREEDY), sink=lambda e, i=i: got[i].extend(e.token_ids))
    engine.step()
    assert forwards == [(2, 5), (2, 5), (10, 1)]  # rows 0-1 and 8-9 prefilled, then every row decodes
    assert all(len(got[i]) == 2 for i in range(4))  # each has its first token, and its second, in this step
    while engine.busy:
        engine.step()
    assert [got[i] for i in range(4)] == [recompute_greedy(model, p, 3) for p in prompts]
