from __future__ import annotations

import json

import pytest

from lmforge.config import resolve
from lmforge.errors import UserError
from lmforge.eval.perplexity import ngram_baseline
from lmforge.recipes.compare import CompareConfig, compare, comparison_table

QUICK = {"steps": 3, "batch_size": 4, "seq_len": 16, "max_batches": 2, "device": "cpu"}


@pytest.fixture(scope="module")
def compared(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    return compare(resolve(CompareConfig, data=str(tiny_data), out=str(out), ngram_order=2, **QUICK)), out


def test_trains_both_neural_models_and_scores_all_three_on_one_split(compared, tiny_data):
    result, out = compared
    assert [e.kind for e in result.entries] == ["ngram", "lstm", "transformer"]
    assert [e.name for e in result.entries] == ["2-gram KN", "LSTM", "Transformer"]
    ngram, lstm, transformer = result.entries
    baseline = ngram_baseline(tiny_data, order=2)
    assert ngram.score.loss == pytest.approx(baseline["loss"]) and ngram.score.bpb == pytest.approx(baseline["bpb"])
    for entry, run in ((lstm, "lstm"), (transformer, "transformer")):
        assert entry.checkpoint.startswith(str(out / run / "checkpoints"))
        assert entry.score.tokens == 2 * 4 * 16 and entry.source.endswith("3 steps")
        assert entry.score.bpb > 0 and entry.size > 0
    assert "lstm-tiny" in lstm.source and "tiny" in transformer.source

    saved = json.loads(result.json.read_text())
    assert saved["split"] == "val" and saved["seq_len"] == 16
    assert [m["name"] for m in saved["models"]] == ["2-gram KN", "LSTM", "Transformer"]
    assert saved["models"][0]["ppl"] == pytest.approx(ngram.score.ppl)
    assert result.plot == out / "compare.png" and result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_reuses_the_trained_models_and_checkpoints_can_be_given(compared, tiny_data, tmp_path):
    first, out = compared
    mtime = (out / "lstm" / "checkpoints" / "latest").stat().st_mtime_ns
    again = compare(resolve(CompareConfig, data=str(tiny_data), out=str(out), ngram_order=3, **QUICK))
    assert (out / "lstm" / "checkpoints" / "latest").stat().st_mtime_ns == mtime  # nothing retrained
    assert [e.score.loss for e in again.entries[1:]] == pytest.approx([e.score.loss for e in first.entries[1:]])
    assert again.entries[0].name == "3-gram KN"

    given = compare(resolve(CompareConfig, data=str(tiny_data), out=str(tmp_path / "given"),
                            checkpoint=str(out / "transformer"), lstm_checkpoint=first.entries[1].checkpoint,
                            **QUICK))
    assert [e.source for e in given.entries[1:]] == ["loaded (lstm)", "loaded (gpt)"]
    assert given.entries[2].score.loss == pytest.approx(first.entries[2].score.loss)
    assert not (tmp_path / "given" / "lstm").exists()  # nothing trained


def test_an_earlier_run_with_other_settings_or_data_is_not_silently_reused(compared, tmp_path):
    from conftest import prepare_tiny

    _, out = compared
    with pytest.raises(UserError, match="holds a run with other settings") as e:
        compare(resolve(CompareConfig, data=str(compared[0].data), out=str(out), **{**QUICK, "seq_len": 8}))
    assert "delete" in e.value.line() and "seq_len 16 -> 8" in e.value.line()
    other = prepare_tiny(tmp_path, kind="bpe", vocab_size=300, docs=60)
    with pytest.raises(UserError, match="holds a model trained on other data"):
        compare(resolve(CompareConfig, data=str(other), out=str(out), **QUICK))


def test_table_names_every_model(compared):
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(comparison_table(compared[0]))
    text = console.export_text()
    for word in ("2-gram KN", "LSTM", "Transformer", "ppl", "bits/byte"):
        assert word in text


def test_bad_inputs_fail_before_anything_is_trained_or_written(tiny_data, tmp_path):
    out = tmp_path / "cmp"
    with pytest.raises(UserError, match="no 'test' split"):
        compare(resolve(CompareConfig, data=str(tiny_data), out=str(out), split="test", **QUICK))
    with pytest.raises(UserError, match="checkpoint not found") as e:
        compare(resolve(CompareConfig, data=str(tiny_data), out=str(out), lstm_checkpoint=str(tmp_path / "nope"),
                        **QUICK))
    assert "--lstm-checkpoint" in e.value.line()
    with pytest.raises(UserError, match="unknown model preset 'huge'"):
        compare(resolve(CompareConfig, data=str(tiny_data), out=str(out), transformer_preset="huge", **QUICK))
    assert not out.exists()
    with pytest.raises(UserError, match="no prepared data"):
        resolve(CompareConfig, out=str(out))
    with pytest.raises(UserError, match="option .steps. is 0, but must be >= 1"):
        resolve(CompareConfig, data=str(tiny_data), steps=0)
