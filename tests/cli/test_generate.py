"""`lmforge generate`: a decoder continues its prompt; an encoder-decoder reads it as the source, as in training."""

from __future__ import annotations

import pytest
import torch

from lmforge.checkpoints import load_model
from lmforge.cli.generate import GenerateConfig, run_generate
from lmforge.cli.main import main
from lmforge.config import resolve
from lmforge.data.tokenizer import decoder_start_id, load_tokenizer, special_token_ids
from lmforge.models import ModelConfig, build_model
from lmforge.models.io import save_model


def checkpoint(tmp_path, tiny_data, family: str):
    torch.manual_seed(0)
    vocab = load_tokenizer(tiny_data).get_vocab_size()
    cfg = ModelConfig(family=family, vocab_size=vocab, max_seq_len=32, n_layer=2, n_head=2, d_model=32)
    return save_model(tmp_path / family, build_model(cfg).eval(), cfg, tiny_data)


def generate(ckpt, prompt: str, n: int) -> str:
    return run_generate(resolve(GenerateConfig, checkpoint=str(ckpt), prompts=[prompt], temperature=0.0,
                                max_new_tokens=n, stream=False, device="cpu"))[0]


def test_an_encoder_decoder_translates_the_prompt_framed_as_in_training(tmp_path, tiny_data):
    ckpt = checkpoint(tmp_path, tiny_data, "t5")
    source = "Return the list of names."
    text = generate(ckpt, source, 10)

    # The reference: `source <eos>` encoded, the decoder started from the training's start token (<pad>), every
    # prefix recomputed without a cache, stopped at <eos>.
    tok, (model, _) = load_tokenizer(ckpt), load_model(ckpt)
    ids = special_token_ids(tok)
    with torch.no_grad():
        memory = model.encode(torch.tensor([[*tok.encode(source, add_special_tokens=False).ids, ids["eos"]]]))
        tgt = torch.tensor([[decoder_start_id(ids)]])
        for _ in range(10):
            tgt = torch.cat([tgt, model.decode(tgt, memory)[:, -1:].argmax(-1)], dim=1)
    out = tgt[0, 1:].tolist()
    out = out[: out.index(ids["eos"])] if ids["eos"] in out else out
    assert out and text == tok.decode(out, skip_special_tokens=True)


@pytest.mark.parametrize("family", ["bert", "lstm"])
def test_models_without_a_transformer_decoder_are_one_line(tmp_path, tiny_data, capsys, family):
    ckpt = checkpoint(tmp_path, tiny_data, family)
    assert main(["generate", "--checkpoint", str(ckpt), "hello"]) == 2
    err = capsys.readouterr().err
    assert f"generate text; this checkpoint is a {family} " in err and err.count("\n") == 1


def test_an_empty_source_for_an_encoder_decoder_is_one_line(tmp_path, tiny_data, capsys):
    ckpt = checkpoint(tmp_path, tiny_data, "t5")
    assert main(["generate", "--checkpoint", str(ckpt), ""]) == 2
    assert "an encoder-decoder needs a source text" in capsys.readouterr().err


def test_max_new_tokens_beyond_the_context_is_cut_with_one_warning(tmp_path, tiny_data, capsys):
    ckpt = checkpoint(tmp_path, tiny_data, "gpt")
    generate(ckpt, "The", 400)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: --max-new-tokens 400 is cut to " in err
    assert "the model's context is 32 tokens" in err
