"""`lmforge train --init-from`: fine-tuning starts from a checkpoint's weights with a new head."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmforge.models import build_model, get_preset

from .objectives import run_train, write_tsv
from .objectives.test_classification import toy_examples

BERT_MLM = ["--preset", "bert-tiny", "--objective", "mlm"]


def test_bert_pretrained_with_mlm_then_fine_tuned_as_a_classifier(tmp_path, tiny_data):
    """The issue's smoke test: MLM pretraining, then --init-from with a classification head on a labelled file."""
    from lmforge.checkpoints import load_model, resolve_checkpoint

    rc, _ = run_train(tiny_data, tmp_path / "mlm", *BERT_MLM, "--steps", "3")
    assert rc == 0
    pretrained, _ = load_model(resolve_checkpoint(tmp_path / "mlm"))
    labels = str(write_tsv(tmp_path / "labels.tsv", toy_examples(300), header=("text", "label")))
    rc, records = run_train(tiny_data, tmp_path / "cls", "--init-from", str(tmp_path / "mlm"), "--objective",
                            "classification", "--objective-options.pairs", labels,
                            "--objective-options.pairs-val-fraction", "0.2", "--steps", "80", "--optim.schedule",
                            "constant", "--eval-batches", "0", "--log-every", "5")
    assert rc == 0
    # One line (printed, and in metrics.jsonl) says what came from the checkpoint, what is new and what was left out.
    report = next(r["report"] for r in records if r.get("event") == "init_from")
    assert report.startswith("init from") and "\n" not in report
    assert "new: classifier (2 tensors)" in report and "dropped: mlm_head, nsp_head" in report
    val = [r for r in records if r.get("event") == "eval"][-1]
    assert val["val_examples"] == 43 and val["val_accuracy"] >= 0.8  # "zebra" or not: chance 0.5 (seeds 0-2: 0.98-1)

    model, cfg = load_model(resolve_checkpoint(tmp_path / "cls"))
    assert cfg.family == "bert" and cfg.head == "classify" and cfg.labels == ["no", "yes"]
    assert cfg.d_model == pretrained.cfg.d_model == 64  # the architecture is the checkpoint's (not bert-tiny's 128)


def test_init_from_loads_matching_tensors_and_reports_the_rest(tmp_path):
    from lmforge.models.io import save_model
    from lmforge.train.init import init_from

    source_cfg = get_preset("tiny")
    source_cfg.vocab_size = 64
    source = build_model(source_cfg)
    save_model(tmp_path / "lm", source, source_cfg)
    target_cfg = get_preset("tiny")
    target_cfg.vocab_size, target_cfg.labels, target_cfg.head = 64, ["a", "b", "c"], "classify"
    target = build_model(target_cfg)
    report = init_from(target, tmp_path / "lm")
    assert report.new == ["score.weight"] and report.dropped == []  # lm_head is tied: stored as the embedding
    assert torch.equal(target.embed.tok.weight, source.embed.tok.weight)
    assert torch.equal(target.blocks[3].mlp.down.weight, source.blocks[3].mlp.down.weight)
    assert report.loaded_params == sum(p.numel() for p in target.parameters()) - target.score.weight.numel()


def test_an_lstm_language_model_starts_the_forward_half_of_a_bidirectional_classifier(tmp_path):
    from lmforge.models.io import save_model
    from lmforge.train.init import init_from

    source_cfg = dataclasses.replace(get_preset("lstm-tiny"), vocab_size=64, d_model=32)
    source = build_model(source_cfg)
    save_model(tmp_path / "lm", source, source_cfg)
    target = build_model(dataclasses.replace(source_cfg, labels=["a", "b"], bidirectional=True))
    report = init_from(target, tmp_path / "lm")
    assert sorted(report.new) == sorted(["head.weight", "head.bias", *(
        f"lstm.{kind}_l0_reverse" for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))])
    assert torch.equal(target.lstm.weight_ih_l0, source.lstm.weight_ih_l0) and report.dropped == []
    # (With two layers the second reads both directions, 2 x d_model wide: the language model's does not fit.)


def test_a_checkpoint_of_another_shape_is_one_line(tmp_path, tiny_data, capsys):
    from lmforge.models.io import save_model

    cfg = get_preset("tiny")
    cfg.vocab_size = 512
    save_model(tmp_path / "lm", build_model(cfg), cfg)
    capsys.readouterr()
    rc, _ = run_train(tiny_data, tmp_path / "run", "--init-from", str(tmp_path / "lm"), "--model.d-model", "32")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "do not fit this model" in err and "architecture comes from the checkpoint" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_checkpoint_is_one_line(tmp_path, tiny_data, capsys):
    rc, _ = run_train(tiny_data, tmp_path / "run", "--init-from", str(tmp_path / "nothing"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "checkpoint to start from not found" in err


def test_data_from_another_tokenizer_is_refused(tmp_path, tiny_data, capsys):
    """Fine-tuning data must be encoded by the checkpoint's tokenizer: other ids would mean other tokens."""
    from lmforge.models.io import save_model

    cfg = get_preset("tiny")
    cfg.vocab_size = 512
    other_tokenizer = tmp_path / "tok"
    other_tokenizer.mkdir()
    (other_tokenizer / "tokenizer.json").write_text((tiny_data / "tokenizer.json").read_text().replace(
        '"Ġthe"', '"Ġteh"', 1))
    save_model(tmp_path / "lm", build_model(cfg), cfg, tokenizer_dir=other_tokenizer)
    capsys.readouterr()
    rc, _ = run_train(tiny_data, tmp_path / "run", "--init-from", str(tmp_path / "lm"))
    err = capsys.readouterr().err
    assert rc == 2 and "another tokenizer than the checkpoint's" in err and "--tokenizer-from" in err


def test_a_head_for_other_labels_starts_fresh_but_the_backbone_loads(tmp_path):
    """A classifier fine-tuned onto another label set: its head has another shape, and is new."""
    from lmforge.models.io import save_model
    from lmforge.train.init import init_from

    cfg = get_preset("bert-tiny")
    cfg.vocab_size, cfg.head, cfg.labels = 64, "classify", ["neg", "pos"]
    save_model(tmp_path / "two", build_model(cfg), cfg)
    cfg.labels = ["a", "b", "c"]
    target = build_model(cfg)
    report = init_from(target, tmp_path / "two")
    assert report.new == ["classifier.weight", "classifier.bias"] and "pooler.weight" in report.loaded


def hf_directory(tmp_path, tiny_data, kind: str):
    """A random tiny `transformers` BERT (BertForPreTraining) or GPT-2 (GPT2LMHeadModel), 64 wide, saved with the
    tokenizer of `tiny_data`: what a downloaded Hugging Face model directory holds."""
    import shutil

    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "bert":
        hf = transformers.BertForPreTraining(transformers.BertConfig(
            vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
            max_position_embeddings=128))
    else:
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=512, n_embd=64, n_layer=2, n_head=2,
                                                                  n_positions=128))
    hf.save_pretrained(tmp_path / "hf")
    shutil.copy(tiny_data / "tokenizer.json", tmp_path / "hf" / "tokenizer.json")
    return tmp_path / "hf", hf.state_dict()


# lmforge tensor -> the Hugging Face one it comes from (random matrices: norms start at 1 / 0 on both sides).
HF_TENSORS = {
    "bert": {"embed.tok.weight": lambda s: s["bert.embeddings.word_embeddings.weight"],
             "embed.pos.weight": lambda s: s["bert.embeddings.position_embeddings.weight"],
             "encoder.blocks.1.attn.wqkv.weight": lambda s: torch.cat(
                 [s[f"bert.encoder.layer.1.attention.self.{n}.weight"] for n in ("query", "key", "value")]),
             "encoder.blocks.1.mlp.down.weight": lambda s: s["bert.encoder.layer.1.output.dense.weight"],
             "pooler.weight": lambda s: s["bert.pooler.dense.weight"]},
    "gpt2": {"embed.tok.weight": lambda s: s["transformer.wte.weight"],
             "embed.pos.weight": lambda s: s["transformer.wpe.weight"],
             "blocks.1.mlp.down.weight": lambda s: s["transformer.h.1.mlp.c_proj.weight"].T},  # Conv1D: transposed
}


@pytest.mark.parametrize(("kind", "report"), [
    ("bert", "loaded 31 tensors (embed, encoder, pooler; 0.11M parameters); new: classifier (2 tensors); dropped: "
             "mlm_head, nsp_head (7 tensors)"),
    ("gpt2", "loaded 28 tensors (embed, blocks, norm_f; 0.14M parameters); new: score (1 tensors)"),  # lm_head: tied
])
def test_a_hugging_face_directory_fine_tunes_as_a_classifier_from_its_weights(tmp_path, tiny_data, kind, report):
    """`--init-from HF_DIR`: the architecture and weights are the directory's, the classify head is new. At lr 0 the
    fine-tuned checkpoint still holds the transformers tensors, so every one of them was loaded (not left fresh)."""
    from lmforge.checkpoints import load_model, resolve_checkpoint

    hf_dir, hf_state = hf_directory(tmp_path, tiny_data, kind)
    labels = str(write_tsv(tmp_path / "labels.tsv", toy_examples(60), header=("text", "label")))
    rc, records = run_train(tiny_data, tmp_path / "cls", "--init-from", str(hf_dir), "--objective", "classification",
                            "--objective-options.pairs", labels, "--steps", "2", "--optim.lr", "0")
    assert rc == 0
    line = next(r["report"] for r in records if r.get("event") == "init_from")
    assert line == f"init from {hf_dir}: {report}", line
    model, cfg = load_model(resolve_checkpoint(tmp_path / "cls"))
    assert cfg.family == kind.removesuffix("2") and cfg.head == "classify" and cfg.labels == ["no", "yes"]
    assert (cfg.n_layer, cfg.d_model, cfg.max_seq_len) == (2, 64, 128)  # the directory's, not a preset's
    ours = model.state_dict()
    for name, theirs in HF_TENSORS[kind].items():
        assert torch.equal(ours[name], theirs(hf_state)), name


def test_a_hugging_face_directory_with_another_tokenizer_is_refused(tmp_path, tiny_data, capsys):
    hf_dir, _ = hf_directory(tmp_path, tiny_data, "bert")
    (hf_dir / "tokenizer.json").write_text((tiny_data / "tokenizer.json").read_text().replace('"Ġthe"', '"Ġteh"', 1))
    labels = str(write_tsv(tmp_path / "labels.tsv", toy_examples(20), header=("text", "label")))
    capsys.readouterr()
    rc, _ = run_train(tiny_data, tmp_path / "cls", "--init-from", str(hf_dir), "--objective", "classification",
                      "--objective-options.pairs", labels)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "another tokenizer than the checkpoint's" in err, err
    assert not (tmp_path / "cls" / "checkpoints").exists()
