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


def test_an_encoder_decoder_prints_only_its_output_a_decoder_its_prompt_and_continuation(tmp_path, tiny_data,
                                                                                          capsys):
    args = ["--temperature", "0", "--max-new-tokens", "6", "--device", "cpu"]
    source = "Ein Mann fährt Fahrrad."
    for family in ("t5", "gpt"):
        ckpt = checkpoint(tmp_path, tiny_data, family)
        want = generate(ckpt, source, 6)
        capsys.readouterr()
        assert main(["generate", "--checkpoint", str(ckpt), source, *args]) == 0
        printed = capsys.readouterr().out
        assert printed == (want if family == "t5" else source + want) + "\n"


def test_invalid_utf8_in_a_prompt_is_replaced_with_a_notice_or_refused_in_one_line(tmp_path, tiny_data, capsys):
    ckpt = checkpoint(tmp_path, tiny_data, "gpt")
    prompt = "caf\udce9 au lait"  # b"caf\xe9 au lait" (Latin-1) as Python decodes it from argv
    args = ["generate", "--checkpoint", str(ckpt), prompt, "--max-new-tokens", "3", "--device", "cpu"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("caf\ufffd au lait")
    assert "invalid UTF-8 in 1 prompt(s) replaced" in captured.err and captured.err.count("\n") == 1
    assert main([*args, "--encoding-errors", "fail"]) == 2
    err = capsys.readouterr().err
    assert "the prompt holds invalid UTF-8" in err and err.count("\n") == 1 and "Traceback" not in err


def test_generation_past_the_trained_length_warns_once(tmp_path, tiny_data, capsys):
    torch.manual_seed(0)
    vocab = load_tokenizer(tiny_data).get_vocab_size()
    cfg = ModelConfig(family="gpt", vocab_size=vocab, max_seq_len=32, n_layer=1, n_head=2, d_model=32,
                      trained_seq_len=4)
    ckpt = save_model(tmp_path / "gpt", build_model(cfg).eval(), cfg, tiny_data)
    args = ["generate", "--checkpoint", str(ckpt), "--temperature", "0", "--device", "cpu"]
    assert main([*args, "one two three four five", "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "went past the 4 tokens this model was trained at" in err
    assert main([*args, "one", "--max-new-tokens", "1"]) == 0
    assert capsys.readouterr().err == ""


def test_max_new_tokens_beyond_the_context_is_cut_with_one_warning(tmp_path, tiny_data, capsys):
    ckpt = checkpoint(tmp_path, tiny_data, "gpt")
    generate(ckpt, "The", 400)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: --max-new-tokens 400 is cut to " in err
    assert "the model's context is 32 tokens" in err


def test_num_beams_on_the_cli_prints_the_best_beam_and_says_once_that_it_does_not_stream(tmp_path, tiny_data,
                                                                                          capsys):
    from lmforge.infer.generate import beam_search_ids

    ckpt = checkpoint(tmp_path, tiny_data, "gpt")
    args = ["generate", "--checkpoint", str(ckpt), "one two", "--max-new-tokens", "6", "--device", "cpu",
            "--num-beams", "3"]
    assert main(args) == 0
    out = capsys.readouterr()
    model, _ = load_model(ckpt, "cpu")
    tok = load_tokenizer(ckpt)
    eos = special_token_ids(tok).get("eos")
    cfg = GenerateConfig(max_new_tokens=6, num_beams=3)
    best = beam_search_ids(model, [tok.encode("one two").ids], cfg, eos_id=eos)[0]
    assert out.out == "one two" + tok.decode(best, skip_special_tokens=True) + "\n"
    assert out.err == ""
    assert main([*args, "--stream"]) == 0
    err = capsys.readouterr().err
    assert err == "notice: no streaming with --num-beams 3: the best beam is known only at the end\n"


@pytest.mark.parametrize("extra, message", [
    (["--num-beams", "0"], "--num-beams"),
    (["--num-beams", "2", "--top-p", "0.5"], "--top-p 0.5 only shape sampling"),
    (["--no-repeat-ngram-size", "3"], "--no-repeat-ngram-size only applies with --num-beams N (N > 1)"),
])
def test_bad_beam_options_are_one_line(tmp_path, tiny_data, capsys, extra, message):
    ckpt = checkpoint(tmp_path, tiny_data, "gpt")
    assert main(["generate", "--checkpoint", str(ckpt), "one", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_tokenizer_bigger_than_the_models_vocabulary_is_one_line_in_every_verb(tmp_path, tiny_data, capsys):
    """(A data directory prepared again under a running training once gave checkpoints such a pair.)"""
    cfg = ModelConfig(family="gpt", vocab_size=100, max_seq_len=32, n_layer=1, n_head=2, d_model=32)
    ckpt = save_model(tmp_path / "gpt", build_model(cfg).eval(), cfg, tiny_data)  # a 512-token tokenizer
    for argv in (["generate", "--checkpoint", str(ckpt), "The", "--device", "cpu"],
                 ["explain", "--checkpoint", str(ckpt), "--text", "The cat", "--out", str(tmp_path / "x"),
                  "--device", "cpu"],
                 ["export", str(ckpt), "--out", str(tmp_path / "hf")]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the tokenizer has 512 tokens but the model's vocabulary is 100" in err
    assert not (tmp_path / "hf").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("how", ["--prompt-lookup", "--draft"])
def test_speculative_decoding_prints_the_plain_greedy_text(tmp_path, tiny_data, capsys, how):
    ckpt = checkpoint(tmp_path, tiny_data, "gpt")
    plain = ["generate", "--checkpoint", str(ckpt), "the the the", "--temperature", "0", "--max-new-tokens", "12",
             "--device", "cpu"]
    assert main(plain) == 0
    want = capsys.readouterr().out
    torch.manual_seed(1)
    vocab = load_tokenizer(tiny_data).get_vocab_size()
    draft_cfg = ModelConfig(family="gpt", vocab_size=vocab, max_seq_len=32, n_layer=1, n_head=2, d_model=16)
    draft = save_model(tmp_path / "draft", build_model(draft_cfg).eval(), draft_cfg, tiny_data)
    assert main([*plain, *([how] if how == "--prompt-lookup" else [how, str(draft)])]) == 0
    assert capsys.readouterr().out == want


def test_a_draft_with_another_tokenizer_is_one_line(tmp_path, tiny_data, capsys):
    ckpt = checkpoint(tmp_path, tiny_data, "gpt")
    vocab = load_tokenizer(tiny_data).get_vocab_size()
    other = ModelConfig(family="gpt", vocab_size=vocab + 16, max_seq_len=32, n_layer=1, n_head=2, d_model=16)
    draft = save_model(tmp_path / "draft", build_model(other).eval(), other, tiny_data)
    assert main(["generate", "--checkpoint", str(ckpt), "hi", "--temperature", "0", "--max-new-tokens", "5",
                 "--draft", str(draft)]) == 2
    err = capsys.readouterr().err
    assert "draft model uses another tokenizer" in err and err.count("\n") == 1
