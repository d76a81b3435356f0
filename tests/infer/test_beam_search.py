"""Beam search, token for token against `transformers`' `generate(num_beams=...)` on the exported model.

Every model is tiny, random and built in the test (nothing is downloaded). The EOS of the cases "with EOS" is the
token the model emits most often, so hypotheses really end on it.
"""

from __future__ import annotations

import itertools

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lmforge.errors import UserError  # noqa: E402
from lmforge.infer.generate import GenerationConfig, beam_search_ids, generate_ids  # noqa: E402
from lmforge.interop import export_hf  # noqa: E402
from lmforge.models import ModelConfig, build_model, get_preset  # noqa: E402
from lmforge.models.blocks import CrossKVCache, KVCache  # noqa: E402
from lmforge.models.io import save_model  # noqa: E402

VOCAB, NEW, PROMPT = 97, 12, 6
SMALL = dict(vocab_size=VOCAB, max_seq_len=64, n_layer=2, n_head=4, d_model=32, init_std=0.1)
FAMILIES = {
    "gpt": dict(family="gpt"),
    "llama": dict(family="llama", norm="rmsnorm", mlp="gated", activation="silu", pos="rope", bias=False,
                  tie_embeddings=False, n_kv_head=2, d_ff=48),
    "t5": {**get_preset("t5-tiny").to_dict(), "n_decoder_layer": 2, "n_kv_head": 4, "head_dim": 8, "d_ff": 48,
           "relative_buckets": 8, "relative_max_distance": 16},
}
# width, length_penalty, no_repeat_ngram_size, early_stopping, with EOS
CASES = list(itertools.product([2, 4], [1.0, 0.5], [0, 2], [True, False], [True, False]))


def models(tmp_path, family: str):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**FAMILIES[family], **SMALL})
    model = build_model(cfg).eval()
    with torch.no_grad():  # a random t5 says nothing but token 0 (its decoder start and pad) without this
        model.embed.tok.weight[0].mul_(0.1)
    hf_dir = export_hf(save_model(tmp_path / "ckpt", model, cfg, None), tmp_path / "hf")
    auto = transformers.AutoModelForSeq2SeqLM if family == "t5" else transformers.AutoModelForCausalLM
    return model, auto.from_pretrained(hf_dir).eval()


def hf_beams(hf, prompts: torch.Tensor, skip: int, eos: int | None, **options) -> list[list[int]]:
    with torch.no_grad():
        out = hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=NEW, do_sample=False,
                          eos_token_id=eos, pad_token_id=eos if eos is not None else 0, **options)
    rows = out[:, skip:].tolist()  # after the prompt (a decoder) or the decoder start token (t5)
    return [row[: row.index(eos)] if eos in row else row for row in rows]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_beam_search_matches_transformers_token_for_token(tmp_path, family):
    model, hf = models(tmp_path, family)
    encoder_decoder = family == "t5"
    prompts = torch.randint(3, VOCAB, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    skip, start = (1, 0) if encoder_decoder else (PROMPT, None)
    beams = hf_beams(hf, prompts, skip, None, num_beams=4)
    emitted = [tok for row in beams for tok in row if tok != 0]
    eos_id = max(set(emitted), key=emitted.count)
    ended = 0
    for width, penalty, ngram, early, with_eos in CASES:
        eos = eos_id if with_eos else None
        cfg = GenerationConfig(max_new_tokens=NEW, temperature=0.0, num_beams=width, length_penalty=penalty,
                               no_repeat_ngram_size=ngram, early_stopping=early)
        ours = beam_search_ids(model, prompts.tolist(), cfg, eos_id=eos, decoder_start_id=start)
        theirs = hf_beams(hf, prompts, skip, eos, num_beams=width, length_penalty=penalty,
                          no_repeat_ngram_size=ngram, early_stopping=early)
        assert ours == theirs, (width, penalty, ngram, early, eos)
        ended += with_eos and any(len(row) < NEW for row in ours)
    assert ended >= 4  # the EOS cases do end hypotheses early


def test_one_beam_is_the_sampler_and_greedy_is_unchanged():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**FAMILIES["gpt"], **SMALL})).eval()
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.0)
    assert generate_ids(model, [[5, 6, 7]], cfg) == generate_ids(model, [[5, 6, 7]], cfg)
    # a width-1 beam search is greedy search
    assert beam_search_ids(model, [[5, 6, 7]], cfg) == generate_ids(model, [[5, 6, 7]], cfg)


def test_cache_reorder_moves_rows_to_their_parents():
    cache = KVCache(3, 4, 2, 5, torch.float32)
    cache.k.copy_(torch.arange(3.0)[:, None, None, None].expand_as(cache.k))
    cache.v.copy_(cache.k * 10)
    storage = cache.k.data_ptr()
    cache.reorder(torch.tensor([2, 2, 0]))
    assert cache.k[:, 0, 0, 0].tolist() == [2, 2, 0] and cache.v[:, 0, 0, 0].tolist() == [20, 20, 0]
    assert cache.k.data_ptr() == storage  # in place: static shapes for a compiled step
    cross = CrossKVCache()
    cross.reorder(torch.tensor([0]))  # nothing computed yet: nothing to do
    cross.kv = (torch.arange(3.0)[:, None], torch.arange(3.0)[:, None] * 10)
    cross.reorder(torch.tensor([1, 1, 0]))
    assert cross.kv[0][:, 0].tolist() == [1, 1, 0] and cross.kv[1][:, 0].tolist() == [10, 10, 0]


@pytest.mark.parametrize("option, flag", [(dict(temperature=0.5), "--temperature 0.5"), (dict(top_k=5), "--top-k 5"),
                                          (dict(top_p=0.9), "--top-p 0.9"),
                                          (dict(repetition_penalty=1.2), "--repetition-penalty 1.2")])
def test_sampling_options_with_beams_are_one_line(option, flag):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**FAMILIES["gpt"], **SMALL})).eval()
    with pytest.raises(UserError, match=f"--num-beams 2 searches deterministically; {flag}"):
        beam_search_ids(model, [[1, 2]], GenerationConfig(num_beams=2, **option))
