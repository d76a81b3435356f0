"""`eval.task_checkpoint`: the one way the task scorers and `predict` open a checkpoint and check their file."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmforge.errors import UserError


@pytest.fixture(scope="module")
def gpt_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory holding one random-init gpt checkpoint (2 x 32) saved with tiny_data's tokenizer."""
    from dataclasses import replace

    from lmforge.models import build_model
    from lmforge.models.config import get_preset
    from lmforge.models.io import save_model

    cfg = replace(get_preset("tiny"), n_layer=2, d_model=32, n_head=2, n_kv_head=2, max_seq_len=32, vocab_size=512)
    run = tmp_path_factory.mktemp("run")
    save_model(run / "checkpoints" / "best", build_model(cfg), cfg, tokenizer_dir=tiny_data)
    return run


def test_a_run_directory_opens_as_its_best_checkpoint_with_its_tokenizer(gpt_run):
    from lmforge.eval.task_checkpoint import open_task_checkpoint
    from lmforge.models.registry import GENERATE

    ckpt = open_task_checkpoint(gpt_run, capability=GENERATE, needed_for="translation", device="cpu")
    assert ckpt.path == gpt_run / "checkpoints" / "best"
    assert ckpt.cfg.n_layer == 2 and not ckpt.model.training
    assert ckpt.special["eos"] == ckpt.tokenizer.token_to_id("<eos>")
    assert str(ckpt.runtime.device) == "cpu"


def test_a_missing_capability_is_one_line_naming_the_task_and_the_fix(gpt_run):
    from lmforge.eval.task_checkpoint import open_task_checkpoint
    from lmforge.models.registry import EXTRACT_SPAN

    with pytest.raises(UserError) as e:
        open_task_checkpoint(gpt_run, capability=EXTRACT_SPAN, needed_for="question answering",
                             fix="pass a checkpoint trained with --objective extractive_qa", device="cpu")
    assert "question answering needs a model that can" in e.value.what
    assert e.value.fix == "pass a checkpoint trained with --objective extractive_qa"


def test_missing_checkpoint_and_missing_file_are_one_line_each(tmp_path):
    from lmforge.eval.task_checkpoint import open_task_checkpoint, require_file

    with pytest.raises(UserError, match="checkpoint not found"):
        open_task_checkpoint(tmp_path / "nowhere", device="cpu")
    with pytest.raises(UserError, match="pairs file not found") as e:
        require_file(tmp_path / "none.tsv", "pairs file", fix="pass --file FILE")
    assert e.value.where == str(tmp_path / "none.tsv")
    (tmp_path / "a.tsv").write_text("source\ttarget\n")
    assert require_file(str(tmp_path / "a.tsv"), "pairs file", fix="pass --file FILE") == tmp_path / "a.tsv"
