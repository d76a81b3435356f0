"""Distillation: the soft-target KL, a student that learns from a teacher through the one trainer, and one line for
a teacher that cannot teach this student."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import torch.nn.functional as F

from lmforge.models import build_model
from lmforge.models.config import get_preset
from lmforge.models.io import save_model
from lmforge.train.objectives.distill import soft_target_kl

from . import assert_learns, last_eval, run_train, train_losses

STUDENT = ["--objective", "distill", "--model.n-layer", "1", "--steps", "12"]


def test_soft_target_kl_is_the_t_squared_kl_of_the_softened_distributions():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    kl, count = soft_target_kl(s, t, 2.0)
    p, q = F.softmax(t / 2, -1), F.log_softmax(s / 2, -1)
    expected = (p * (p.log() - q)).sum() * 4
    torch.testing.assert_close(kl, expected)
    assert int(count) == 10
    assert float(soft_target_kl(t, t, 3.0)[0]) == pytest.approx(0, abs=1e-5)
    mask = torch.zeros(2, 5)
    mask[0, :2] = 1
    kl, count = soft_target_kl(s, t, 2.0, mask)
    torch.testing.assert_close(kl, (p * (p.log() - q)).sum(-1)[0, :2].sum() * 4)
    assert int(count) == 2


def test_a_student_learns_from_the_teacher_and_reports_its_own_cross_entropy(trained_lms, tiny_data, tmp_path):
    rc, records = run_train(tiny_data, tmp_path / "student", *STUDENT,
                            "--objective-options.teacher", str(trained_lms["gpt"]))
    assert rc == 0
    assert_learns(records)
    assert {"val_loss", "val_ppl", "val_bpb"} <= set(last_eval(records))


def test_alpha_zero_is_exactly_causal_lm(trained_lms, tiny_data, tmp_path):
    rc, distilled = run_train(tiny_data, tmp_path / "a0", *STUDENT, "--objective-options.teacher",
                              str(trained_lms["gpt"]), "--objective-options.alpha", "0")
    rc2, plain = run_train(tiny_data, tmp_path / "lm", "--model.n-layer", "1", "--steps", "12")
    assert rc == rc2 == 0
    assert train_losses(distilled) == train_losses(plain)
    rc, soft = run_train(tiny_data, tmp_path / "a1", *STUDENT, "--objective-options.teacher",
                         str(trained_lms["gpt"]), "--objective-options.alpha", "1")
    assert rc == 0 and train_losses(soft) != train_losses(plain)  # the teacher's term changes the training


def test_a_teacher_with_another_tokenizer_is_one_line(trained_lms, tiny_data, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(trained_lms["gpt"], teacher)
    (teacher / "tokenizer.json").write_text((teacher / "tokenizer.json").read_text().replace('"Ġthe"', '"Ġteh"', 1))
    capsys.readouterr()
    rc, _ = run_train(tiny_data, tmp_path / "run", *STUDENT, "--objective-options.teacher", str(teacher))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "the teacher does not share the data's tokenizer" in err and "same token ids" in err


def test_a_teacher_that_cannot_predict_the_next_token_or_none_is_one_line(tiny_data, tmp_path, capsys):
    cfg = dataclasses.replace(get_preset("bert-tiny"), vocab_size=512)
    bert = save_model(tmp_path / "bert", build_model(cfg), cfg, tiny_data)
    capsys.readouterr()
    rc, _ = run_train(tiny_data, tmp_path / "run", *STUDENT, "--objective-options.teacher", str(bert))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "a distillation teacher needs a model that can predict" in err
    rc, _ = run_train(tiny_data, tmp_path / "run2", *STUDENT)
    err = capsys.readouterr().err
    assert rc == 2 and "no teacher checkpoint given" in err
