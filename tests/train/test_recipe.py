"""`lmforge train --recipe NAME`: named option sets shipped as YAML, under the config file and the flags.

The fast recipe's run resumes exactly (Muon's momentum, AdamW's moments, the WSD schedule) and its checkpoint is
refused by the Hugging Face export in one line naming the options with no equivalent.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lmforge.checkpoints import load_model
from lmforge.cli.main import main
from lmforge.config import resolve
from lmforge.errors import UserError
from lmforge.train import TrainConfig
from lmforge.train.objectives import options_classes
from lmforge.train.recipe import load_recipe, recipe_names

SMALL = ["--model.n-layer", "1", "--model.d-model", "32", "--model.n-head", "2", "--seq-len", "32",
         "--batch-size", "4", "--device", "cpu", "--no-tensorboard"]


def test_the_package_ships_the_fast_and_nanogpt_recipes_and_each_resolves(tiny_data):
    assert {"fast", "nanogpt-cpu"} <= set(recipe_names())
    for name in recipe_names():
        resolve(TrainConfig, data=str(tiny_data), recipe=name)  # every key is a TrainConfig option


def test_recipe_options_sit_under_the_config_file_and_the_flags(tiny_data, tmp_path):
    cfg = resolve(TrainConfig, data=str(tiny_data), recipe="fast")
    fast = load_recipe("fast")
    assert cfg.optim.name == "muon" and cfg.optim.schedule == "wsd" and cfg.optim.muon_lr == fast["optim"]["muon_lr"]
    assert cfg.model.qk_norm and cfg.model.activation == "relu2" and not cfg.model.tie_embeddings
    assert cfg.model.logit_softcap == fast["model"]["logit_softcap"]
    assert cfg.model.d_model == 128  # the recipe's preset (tiny) under its model options
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("optim:\n  muon_lr: 0.01\nmodel:\n  qk_norm: false\n")
    cfg = resolve(TrainConfig, config=yaml_file, data=str(tiny_data), recipe="fast", optim__lr=1e-4)
    assert cfg.optim.muon_lr == 0.01 and not cfg.model.qk_norm and cfg.optim.lr == 1e-4
    assert cfg.optim.name == "muon" and cfg.model.activation == "relu2"  # the rest still the recipe's


def test_nanogpt_recipe_is_nanogpts_readme_cpu_run(tiny_data):
    cfg = resolve(TrainConfig, data=str(tiny_data), recipe="nanogpt-cpu")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.d_model, cfg.batch_size, cfg.seq_len, cfg.steps) == (
        4, 4, 128, 12, 64, 2000)
    assert cfg.optim.name == "adamw" and cfg.optim.lr == 1e-3 and cfg.optim.warmup_steps == 100
    assert tuple(cfg.optim.betas) == (0.9, 0.99) and cfg.model.tie_embeddings and cfg.model.pos == "learned"


def test_unknown_recipe_is_one_line_with_a_suggestion_and_status_2(tiny_data, tmp_path, capsys):
    assert main(["train", "--data", str(tiny_data), "--out", str(tmp_path / "r"), "--recipe", "fsat"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown recipe 'fsat' (did you mean fast?)" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def losses(out: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "train"}


def test_fast_recipe_run_resumes_exactly_and_refuses_hf_export_naming_the_options(tiny_data, tmp_path, capsys):
    # 8 steps, checkpoints at 4 and 8; warmup 2, then flat, then the WSD cool-down from step 5 on (decay 0.4).
    args = ["train", "--recipe", "fast", "--data", str(tiny_data), *SMALL, "--steps", "8", "--checkpoint-every",
            "4", "--log-every", "1", "--eval-every", "4", "--eval-batches", "2", "--optim.warmup-steps", "2",
            "--model.dropout", "0.1"]
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0
    # The same run as if killed after its step-4 checkpoint: steps 5-8 again from there.
    cut = Path(shutil.copytree(straight, tmp_path / "cut"))
    shutil.rmtree(cut / "checkpoints" / "step_000008")
    (cut / "checkpoints" / "latest").write_text("step_000004\n")
    assert main(["train", "--out", str(cut), "--resume", "--no-tensorboard"]) == 0
    want, got = losses(straight), losses(cut)
    assert [got[s] for s in range(5, 9)] == pytest.approx([want[s] for s in range(5, 9)], abs=1e-6, rel=0)
    a, cfg = load_model(straight / "checkpoints" / "step_000008")
    b, _ = load_model(cut / "checkpoints" / "step_000008")
    assert cfg.qk_norm and cfg.logit_softcap and not cfg.tie_embeddings
    assert all(torch.allclose(x, y, atol=1e-6, rtol=0) for x, y in zip(a.state_dict().values(),
                                                                        b.state_dict().values()))
    capsys.readouterr()
    assert main(["export", str(straight), "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "qk_norm=True" in err and "logit_softcap=" in err
    assert not (tmp_path / "hf").exists()


def test_muon_under_fsdp_is_refused_in_one_line(tiny_data):
    with pytest.raises(UserError, match="muon orthogonalises whole matrices"):
        resolve(TrainConfig, data=str(tiny_data), recipe="fast", parallel__strategy="fsdp")


EXAMPLE_CONFIGS = sorted((Path(__file__).parents[2] / "examples").glob("*/*.yaml"))


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_config_resolves_with_its_objectives_options(tiny_data, path):
    """The task recipes' YAML files (examples/*/*.yaml) hold only options `lmforge train` knows, with valid values."""
    cfg = resolve(TrainConfig, config=path, data=str(tiny_data))  # an unknown key or a bad value is a UserError
    assert type(cfg.objective_options) is options_classes()[cfg.objective]


def test_the_examples_ship_one_config_per_training_stage():
    assert {f"{p.parent.name}/{p.name}" for p in EXAMPLE_CONFIGS} >= {
        "sst2/classifier.yaml", "multi30k/t5.yaml", "squad/mlm.yaml", "squad/qa.yaml",
        "cnn_dailymail/pretrain.yaml", "cnn_dailymail/summariser.yaml"}
