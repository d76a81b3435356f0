from __future__ import annotations

import gzip

import pytest
import torch

from lmforge.eval.metrics import IGNORE_INDEX

from . import (
    assert_learns,
    last_eval,
    make_objective,
    run_train,
    toy_pairs,
    write_tsv,
)

T5 = ["--preset", "t5-tiny", "--objective", "seq2seq"]


def test_seq2seq_batches_are_teacher_forced(tmp_path, tiny_data):
    pairs = write_tsv(tmp_path / "p.tsv", toy_pairs(40))
    obj = make_objective(tiny_data, "seq2seq", "t5-tiny", objective_options__pairs=str(pairs))
    batch = next(obj.train_batches())
    src, mask, tgt_in, labels = batch["src"], batch["src_mask"], batch["tgt_in"], batch["labels"]
    for s, m, ti, lab in zip(src, mask, tgt_in, labels):
        n, k = int(m.sum()), int((lab != IGNORE_INDEX).sum())
        assert s[n - 1] == obj.eos_id and lab[k - 1] == obj.eos_id and (lab[k:] == IGNORE_INDEX).all()
        assert ti[0] == obj.start_id and torch.equal(ti[1:k], lab[:k - 1])
    text = [obj.sources[i] for i in obj.train_idx]
    assert any(src[0, :int(mask[0].sum())].tolist() == t for t in text)


def test_length_buckets_batch_pairs_of_similar_length(tmp_path, tiny_data):
    pairs = write_tsv(tmp_path / "p.tsv", toy_pairs(400))

    def padding(**options) -> float:  # padded share of the source and target positions over 10 batches
        obj = make_objective(tiny_data, "seq2seq", "t5-tiny", objective_options__pairs=str(pairs), **options)
        batches = [b for _, b in zip(range(10), obj.train_batches())]
        real = sum(int(b["src_mask"].sum()) + int((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
        return 1 - real / sum(b["src"].numel() + b["labels"].numel() for b in batches)

    assert padding(objective_options__length_buckets=20) < 0.5 * padding()


def test_seq2seq_trains_from_the_cli_and_loss_decreases(tmp_path, tiny_data):
    pairs = write_tsv(tmp_path / "p.tsv", toy_pairs())
    rc, records = run_train(tiny_data, tmp_path / "run", *T5, "--objective-options.pairs", str(pairs),
                            "--steps", "20", "--optim.lr", "3e-3", "--optim.schedule", "constant")
    assert rc == 0
    assert_learns(records)
    val = last_eval(records)
    assert val["val_target_tokens"] > 0 and 0.0 <= val["val_accuracy"] <= 1.0


def test_source_longer_than_the_positions_is_one_line_and_truncation_fixes_it(tmp_path, tiny_data, capsys):
    long = " ".join(["word"] * 100)
    pairs = write_tsv(tmp_path / "p.tsv", [*toy_pairs(20), (long, "short")])
    flags = [*T5, "--objective-options.pairs", str(pairs), "--model.max-seq-len", "32", "--steps", "2"]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the source of pair 21 (with <eos>) has 301 tokens, more than the 32 the model's positions allow" in err
    assert not (tmp_path / "run").exists()
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags, "--objective-options.max-source-len", "32")
    assert rc == 0


def test_bad_pairs_are_one_line_or_skipped_and_counted(tmp_path, tiny_data, capsys):
    pairs = write_tsv(tmp_path / "p.tsv", [*toy_pairs(20), ("a source", " "), (" ".join(["word"] * 100), "short")])
    flags = [*T5, "--objective-options.pairs", str(pairs), "--model.max-seq-len", "32", "--steps", "2"]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "line 22: the source and target must both be non-empty text" in err
    assert "--objective-options.skip-bad-rows" in err and not (tmp_path / "run").exists()

    obj = make_objective(tiny_data, "seq2seq", "t5-tiny", model__max_seq_len=32, objective_options__pairs=str(pairs),
                         objective_options__skip_bad_rows=True)
    assert f"skipped 2 row(s) of {pairs}: 1 empty, 1 longer than the context" in capsys.readouterr().err
    assert obj.skipped_rows == 2 and len(obj.sources) == len(obj.target_texts) == 20
    assert obj.target_texts == [t for _, t in toy_pairs(20)]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags, "--objective-options.skip-bad-rows")
    assert rc == 0


@pytest.mark.parametrize(("flags", "message"), [
    (T5, "objective 'seq2seq' trains on text pairs, but no pairs file is given"),
    ([*T5, "--objective-options.pairs", "missing.tsv"], "missing.tsv: pairs file not found"),
    ([*T5, "--objective-options.pairs", "p.tsv", "--objective-options.max-source-len", "300"],
     "objective_options.max_source_len 300 is longer than the model's max_seq_len 256"),
    (["--preset", "bert-tiny", "--objective", "seq2seq"],
     "objective 'seq2seq' trains encoder-decoder or decoder models, but the model is a bert encoder"),
])
def test_bad_input_is_one_line(tmp_path, tiny_data, capsys, flags, message):
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.shared_data
def test_trains_on_multi30k_translation_pairs(tmp_path, tiny_data, shared_data):
    from itertools import islice

    def lines(name):
        with gzip.open(shared_data / "multi30k" / name, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in islice(f, 300)]

    pairs = write_tsv(tmp_path / "en-de.tsv", list(zip(lines("train.en.gz"), lines("train.de.gz"))),
                      header=("en", "de"))
    rc, records = run_train(tiny_data, tmp_path / "run", *T5, "--objective-options.pairs", str(pairs),
                            "--objective-options.source-column", "en", "--objective-options.target-column", "de",
                            "--objective-options.max-target-len", "64", "--steps", "5")
    assert rc == 0
    assert last_eval(records)["val_target_tokens"] > 0


GPT = ["--preset", "tiny", "--objective", "seq2seq"]


def test_a_decoder_reads_the_prompt_template_with_the_loss_masked_to_the_target(tmp_path, tiny_data):
    from lmforge.data.examples import seq2seq_source

    pairs = write_tsv(tmp_path / "p.tsv", toy_pairs(40))
    obj = make_objective(tiny_data, "seq2seq", "tiny", objective_options__pairs=str(pairs))
    eos, sep = obj.special_ids["eos"], obj.special_ids["sep"]
    batch = obj.batch([0, 1, 2])
    for row, (ids, labels) in enumerate(zip(batch["ids"], batch["labels"])):
        source, target = obj.sources[row], obj.targets[row]
        assert source[0] == eos and source[-1] == sep and target[-1] == eos
        assert source == seq2seq_source(obj.cfg.model, obj.special_ids, source[1:-1])
        n = len(source) + len(target) - 1  # the input: prompt and target but its last token
        assert ids[:n].tolist() == (source + target)[:-1]
        scored = labels != IGNORE_INDEX
        # Only the positions that read <sep> and the target are scored, and they predict the target + <eos>.
        assert labels[scored].tolist() == target
        assert not scored[:len(source) - 1].any() and scored[len(source) - 1:n].all() and not scored[n:].any()


def test_a_decoder_fine_tunes_for_seq2seq_and_reports_generated_text_scores(tmp_path, tiny_data):
    pairs = write_tsv(tmp_path / "p.tsv", toy_pairs())
    rc, records = run_train(tiny_data, tmp_path / "run", *GPT, "--objective-options.pairs", str(pairs),
                            "--objective-options.generate-eval", "--steps", "20", "--optim.lr", "3e-3",
                            "--optim.schedule", "constant")
    assert rc == 0
    assert_learns(records)
    val = last_eval(records)
    assert val["val_target_tokens"] > 0 and 0.0 <= val["val_accuracy"] <= 1.0
    assert 0.0 <= val["val_bleu"] <= 100.0 and 0.0 <= val["val_chrf"] <= 100.0 and 0.0 <= val["val_rouge_l"] <= 1.0


def test_a_decoder_pair_longer_than_the_positions_is_one_line(tmp_path, tiny_data, capsys):
    pairs = write_tsv(tmp_path / "p.tsv", [("one two", "two one")] * 20 + [("one " * 6, "two " * 6)])
    rc, _ = run_train(tiny_data, tmp_path / "run", *GPT, "--objective-options.pairs", str(pairs),
                      "--model.max-seq-len", "20", "--seq-len", "20", "--steps", "2")
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "pair 21 reads" in err and "as `<eos> source <sep> target`, more than the model's max_seq_len 20" in err


@pytest.mark.parametrize("preset", ["t5-tiny", "tiny"])
def test_label_smoothing_changes_the_training_loss_only(tmp_path, tiny_data, preset):
    import torch.nn.functional as F

    from lmforge.models import build_model

    pairs = write_tsv(tmp_path / "p.tsv", toy_pairs(40))
    obj = make_objective(tiny_data, "seq2seq", preset, objective_options__pairs=str(pairs),
                         objective_options__label_smoothing=0.1, model__dropout=0.0)
    torch.manual_seed(0)
    model = build_model(obj.cfg.model).train()
    with torch.no_grad():  # larger weights, peaked logits: smoothing moves the loss well past float noise
        for p in model.parameters():
            p.mul_(4)
    batch = obj.batch([0, 1, 2, 3])
    out = obj.forward(model, batch)
    with torch.no_grad():
        logits = model(batch["ids"]) if "ids" in batch else model(batch["src"], batch["tgt_in"], batch["src_mask"])
    flat, labels = logits.flatten(0, 1).float(), batch["labels"].flatten()
    smoothed = F.cross_entropy(flat, labels, ignore_index=IGNORE_INDEX, label_smoothing=0.1)
    plain = F.cross_entropy(flat, labels, ignore_index=IGNORE_INDEX)
    assert out.loss.item() == pytest.approx(smoothed.item(), rel=1e-5)
    assert abs(out.loss.item() - plain.item()) > 5e-3  # ~100x the tolerance of the match above
    assert (out.sums["loss"] / out.sums["count"]).item() == pytest.approx(plain.item(), rel=1e-5)
    model.eval()
    assert obj.forward(model, batch).loss.item() == pytest.approx(plain.item(), rel=1e-5)  # evaluation: plain NLL


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_target_losses_equal_torch_cross_entropy_in_value_and_gradient(smoothing):
    import torch.nn.functional as F

    from lmforge.train.objectives.seq2seq import target_losses

    torch.manual_seed(0)
    logits = (3 * torch.randn(4, 7, 50)).requires_grad_()
    labels = torch.randint(0, 50, (4, 7))
    labels[:, 5:] = IGNORE_INDEX
    loss_sum, count, loss = target_losses(logits, labels, smoothing)
    loss.backward()
    ours = logits.grad.clone()
    logits.grad = None
    flat, targets = logits.flatten(0, 1), labels.flatten()
    reference = F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX, label_smoothing=smoothing)
    reference.backward()
    assert count.item() == 20
    assert loss_sum.item() == pytest.approx(F.cross_entropy(flat, targets, ignore_index=IGNORE_INDEX,
                                                            reduction="sum").item(), rel=1e-6)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    torch.testing.assert_close(ours, logits.grad, rtol=1e-5, atol=1e-7)
