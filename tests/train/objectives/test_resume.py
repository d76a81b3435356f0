from __future__ import annotations

import pytest

from . import run_train, toy_pairs, train_losses, write_tsv

CASES = {
    "mlm_nsp": ["--preset", "bert-tiny", "--objective", "mlm_nsp", "--objective-options.whole-word-mask"],
    "span_corruption": ["--preset", "t5-tiny", "--objective", "span_corruption", "--model.vocab-size", "612"],
    "seq2seq": ["--preset", "t5-tiny", "--objective", "seq2seq"],
    "simcse": ["--preset", "bert-tiny", "--objective", "contrastive", "--model.dropout", "0.1"],
    "contrastive_pairs": ["--preset", "bert-tiny", "--objective", "contrastive"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(tmp_path, tiny_data, case):
    flags = list(CASES[case])
    if case in ("seq2seq", "contrastive_pairs"):
        # 40 pairs in batches of 8: the resumed half crosses an epoch boundary.
        flags += ["--objective-options.pairs", str(write_tsv(tmp_path / "p.tsv", toy_pairs(40)))]
    flags += ["--checkpoint-every", "3", "--optim.schedule", "constant"]  # the same lr whatever --steps
    rc, straight = run_train(tiny_data, tmp_path / "straight", *flags, "--steps", "6")
    assert rc == 0
    rc, _ = run_train(tiny_data, tmp_path / "resumed", *flags, "--steps", "3")
    assert rc == 0
    rc, resumed = run_train(None, tmp_path / "resumed", "--resume", "--steps", "6")
    assert rc == 0
    assert train_losses(resumed)[3:] == pytest.approx(train_losses(straight)[3:], rel=1e-5)
