"""Each objective's own options: chosen by --objective, refused in one line when they are another objective's,
and run configs written when all of them were one flat dataclass still resume."""

from __future__ import annotations

import pytest
import torch
import yaml

from lmforge.config import resolve
from lmforge.errors import UserError
from lmforge.train.checkpoint import STATE
from lmforge.train.config import TrainConfig
from lmforge.train.objectives import Options
from lmforge.train.objectives.masked_lm import MaskedLMNextSentenceOptions, MaskedLMOptions
from lmforge.train.objectives.options import TextPairsOptions
from lmforge.train.objectives.seq2seq import Seq2SeqOptions

from . import run_train, train_losses

# `objective_options` as every config.yaml and training state held it before each objective had its own options.
OLD_FLAT_DEFAULTS = {
    "mlm_probability": 0.15, "mask_replace": 0.8, "random_replace": 0.1, "whole_word_mask": False, "nsp": True,
    "span_noise_density": 0.15, "span_mean_length": 3.0, "sentinels": 100, "contrastive_temperature": 0.05,
    "pairs": None, "source_column": "source", "target_column": "target", "text_column": "text",
    "label_column": "label", "pairs_val_fraction": 0.1, "max_source_len": None, "max_target_len": None,
}


def test_the_objective_chooses_its_options_dataclass(tiny_data):
    def options(objective, **kw):
        return resolve(TrainConfig, data=str(tiny_data), objective=objective, **kw).objective_options

    assert type(options("causal_lm")) is Options
    assert options("mlm", objective_options__mlm_probability=0.2) == MaskedLMOptions(mlm_probability=0.2)
    assert options("mlm_nsp", objective_options={"nsp": False}) == MaskedLMNextSentenceOptions(nsp=False)
    assert options("seq2seq", objective_options__source_column="en") == Seq2SeqOptions(source_column="en")
    assert isinstance(Seq2SeqOptions(), TextPairsOptions)  # the pairs options, and its own
    # A TrainConfig made in code gets its objective's options too.
    assert type(TrainConfig(data=str(tiny_data), objective="mlm").objective_options) is MaskedLMOptions
    with pytest.raises(UserError, match=r"option .objective_options.mlm_probability. is 1.5, but must be in \(0, 1\)"):
        options("mlm", objective_options__mlm_probability=1.5)


@pytest.mark.parametrize(("flags", "yaml_options", "message"), [
    (["--preset", "t5-tiny", "--objective", "seq2seq", "--objective-options.mlm-probability", "0.2"], None,
     "option 'objective_options.mlm_probability' is an option of objective mlm, mlm_nsp, not of 'seq2seq' (fix: "
     "options of objective 'seq2seq': pairs, pairs_val_fraction, max_source_len, source_column, target_column, "
     "max_target_len, generate_eval, eval_max_new_tokens, label_smoothing, length_buckets, "
     "skip_bad_rows)"),
    (["--preset", "lstm-tiny", "--objective", "classification", "--objective-options.source-column", "en"], None,
     "option 'objective_options.source_column' is an option of objective contrastive, seq2seq, not of "
     "'classification' (fix: options of objective 'classification': pairs, pairs_val_fraction, max_source_len, "
     "text_column, label_column, multi_label, label_separator, length_buckets, class_weights, val_pairs, "
     "skip_bad_rows)"),
    ([], {"sentinels": 50},
     "option 'objective_options.sentinels' is an option of objective span_corruption, not of 'causal_lm' (fix: "
     "objective 'causal_lm' takes none)"),
    (["--preset", "bert-tiny", "--objective", "mlm", "--no-objective-options.nsp"], None,
     "option 'objective_options.nsp' is an option of objective mlm_nsp, not of 'mlm' (fix: options of objective "
     "'mlm': mlm_probability, mask_replace, random_replace, whole_word_mask)"),
    ([], {"no_such_option": 1}, "unknown option 'objective_options.no_such_option' (fix: objective 'causal_lm' "
                                "takes none)"),
])
def test_a_field_of_another_objective_is_refused_in_one_line(tmp_path, tiny_data, capsys, flags, yaml_options,
                                                             message):
    if yaml_options is not None:
        config = tmp_path / "run.yaml"
        config.write_text(yaml.safe_dump({"objective_options": yaml_options}))
        flags = [*flags, "--config", str(config)]
    rc, _ = run_train(tiny_data, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_a_run_written_with_the_flat_options_still_resumes(tmp_path, tiny_data):
    """config.yaml and the training state of a run from before per-objective options hold every objective's
    fields: the other objectives' at their defaults are dropped, and the run resumes."""
    run = tmp_path / "run"
    flags = ["--preset", "bert-tiny", "--objective", "mlm", "--objective-options.mlm-probability", "0.2",
             "--checkpoint-every", "3", "--optim.schedule", "constant"]
    rc, straight = run_train(tiny_data, tmp_path / "straight", *flags, "--steps", "6")
    assert rc == 0
    rc, _ = run_train(tiny_data, run, *flags, "--steps", "3")
    assert rc == 0
    flat = {**OLD_FLAT_DEFAULTS, "mlm_probability": 0.2}
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "objective_options": flat}, sort_keys=False))
    state_path = run / "checkpoints" / "step_000003" / STATE
    state = torch.load(state_path, weights_only=True)
    state["train_config"]["objective_options"] = flat
    torch.save(state, state_path)
    (state_path.parent / "checksums.json").unlink()  # such a run's checkpoints had none

    rc, resumed = run_train(None, run, "--resume", "--steps", "6")
    assert rc == 0
    assert train_losses(resumed)[3:] == pytest.approx(train_losses(straight)[3:], rel=1e-5)
    assert yaml.safe_load((run / "config.yaml").read_text())["objective_options"] == {
        "mlm_probability": 0.2, "mask_replace": 0.8, "random_replace": 0.1, "whole_word_mask": False}


def test_resuming_under_changed_options_of_the_objective_is_refused(tmp_path, tiny_data, capsys):
    run = tmp_path / "run"
    rc, _ = run_train(tiny_data, run, "--preset", "bert-tiny", "--objective", "mlm", "--steps", "2")
    assert rc == 0
    capsys.readouterr()
    rc, _ = run_train(None, run, "--resume", "--steps", "4", "--objective-options.mlm-probability", "0.3")
    err = capsys.readouterr().err
    assert rc == 2 and "config does not match the checkpoint (objective_options.mlm_probability 0.15 -> 0.3)" in err
