from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lmforge.errors import UserError
from lmforge.infer.generate import GenerationConfig, generate, generate_ids
from lmforge.models import DecoderLM, ModelConfig

GREEDY = dict(temperature=0.0)


def model_of(**kw) -> DecoderLM:
    torch.manual_seed(0)
    base = dict(vocab_size=300, max_seq_len=64, n_layer=2, n_head=4, d_model=32)
    return DecoderLM(ModelConfig(**{**base, **kw})).eval()


def recompute_greedy(model: DecoderLM, prompt: list[int], n: int) -> list[int]:
    """The reference: recompute the whole sequence for every new token, no cache."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


@pytest.mark.parametrize("family", [dict(), dict(pos="rope", norm="rmsnorm", mlp="gated", n_kv_head=2)])
def test_cached_greedy_equals_full_recompute(family):
    model = model_of(**family)
    prompt = [5, 17, 42, 8]
    out = generate_ids(model, [prompt], GenerationConfig(max_new_tokens=20, **GREEDY))
    assert out[0] == recompute_greedy(model, prompt, 20)


def test_left_padded_batch_equals_each_prompt_alone():
    model = model_of(pos="rope", norm="rmsnorm")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9], [10, 11, 12]]
    cfg = GenerationConfig(max_new_tokens=12, **GREEDY)
    batched = generate_ids(model, prompts, cfg)
    assert batched == [generate_ids(model, [p], cfg)[0] for p in prompts]


def test_eos_ends_a_row_and_new_tokens_capped_by_context():
    model = model_of()
    prompt = [3, 4]
    free = generate_ids(model, [prompt], GenerationConfig(max_new_tokens=10, **GREEDY))[0]
    eos = free[4]
    stopped = generate_ids(model, [prompt], GenerationConfig(max_new_tokens=10, **GREEDY), eos_id=eos)[0]
    assert stopped == free[: free.index(eos)]
    long = generate_ids(model, [prompt], GenerationConfig(max_new_tokens=500, **GREEDY))[0]
    assert len(long) == 64 - len(prompt)


def test_prompt_longer_than_context_is_a_clear_error():
    with pytest.raises(UserError, match="does not fit"):
        generate_ids(model_of(), [list(range(64))], GenerationConfig(max_new_tokens=1))


def test_seeded_sampling_is_reproducible():
    model = model_of()
    cfg = GenerationConfig(max_new_tokens=15, temperature=1.0, top_k=50, seed=123)
    assert generate_ids(model, [[1, 2]], cfg) == generate_ids(model, [[1, 2]], cfg)


@pytest.fixture(scope="module")
def byte_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat, the end. naïve café ünïcödé"] * 10, trainer)
    return tok


def test_streamed_pieces_concatenate_to_result_and_stop_strings_cut(byte_tokenizer):
    model = model_of(vocab_size=byte_tokenizer.get_vocab_size())
    cfg = GenerationConfig(max_new_tokens=30, temperature=1.0, seed=0)
    pieces: dict[int, list[str]] = {0: [], 1: []}
    texts = generate(model, byte_tokenizer, ["the cat", "café"], cfg, on_text=lambda i, s: pieces[i].append(s))
    assert ["".join(pieces[i]) for i in range(2)] == texts
    assert all(len(t) > 0 for t in texts)
    greedy = GenerationConfig(max_new_tokens=30, **GREEDY)
    full = generate(model, byte_tokenizer, ["the cat"], greedy)[0]
    stop = next(full[i : i + 2] for i in range(3, len(full)) if "\ufffd" not in full[i : i + 2])
    greedy.stop = [stop]
    assert generate(model, byte_tokenizer, ["the cat"], greedy)[0] == full[: full.find(stop)]


@pytest.mark.parametrize("family", ["bert", "lstm"])
def test_models_without_a_transformer_decoder_are_refused_in_one_line(family):
    from lmforge.models import build_model

    model = build_model(ModelConfig(family=family, vocab_size=64, max_seq_len=32, n_layer=1, n_head=2, d_model=32))
    with pytest.raises(UserError, match=f"generate text; this checkpoint is a {family} "):
        generate_ids(model, [[1, 2, 3]], GenerationConfig(max_new_tokens=2))


def test_beam_options_are_one_definition_shared_by_generate_eval_and_predict():
    """The same flags, defaults, bounds and help in every verb that beam-searches: inherited, never redeclared."""
    import dataclasses

    from lmforge.cli.eval import EvalConfig
    from lmforge.cli.generate import GenerateConfig
    from lmforge.cli.predict import PredictOptions
    from lmforge.infer.generate import BEAM_ONLY, BeamSearchConfig

    own = {f.name: f for f in dataclasses.fields(BeamSearchConfig)}
    assert set(BEAM_ONLY) == set(own) - {"num_beams"}
    for cls in (GenerateConfig, EvalConfig, PredictOptions):
        theirs = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in own.items():
            assert (theirs[name].default, theirs[name].metadata) == (f.default, f.metadata), (cls, name)
        redeclared = [(c.__name__, n) for c in cls.__mro__ if c is not BeamSearchConfig
                      for n in vars(c).get("__annotations__", {}) if n in own]
        assert not redeclared, redeclared
