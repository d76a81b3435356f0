"""`lmforge distill`: train a smaller student from a teacher checkpoint. A thin verb over `lmforge train` with the
distillation objective (`lmforge.train.objectives.distill`): the same trainer, options and outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from lmforge.cli.common import add_no_verify, add_verb
from lmforge.errors import UserError
from lmforge.train.config import TrainConfig

ORDER = 74

DESCRIPTION = """\
Distil a teacher checkpoint into a smaller student: the student trains on prepared data (made by `lmforge
prepare` with the teacher's tokenizer) with

    loss = alpha * T² * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * cross-entropy(text)

(Hinton et al., 2015; the T² keeps the soft term's gradients at the hard term's scale). The teacher (any
checkpoint that predicts the next token: a decoder or an LSTM, float or quantised) is frozen; the student is
built like `lmforge train` builds a model: --preset (default tiny), any model.* option, and --student-layers N as
a shorthand for --model.n-layer N. A student of half the teacher's layers is the usual start. This verb's own
flags (--teacher, --temperature, --alpha, --student-layers) are listed last, under "distillation".

Everything else is `lmforge train`'s (steps, batch, optimizer, schedule, evaluation, checkpoints, --resume, several
processes under torchrun): `lmforge train --help` lists the options, all accepted here. Evaluation reports the
student's own cross-entropy, so val loss and bits per byte compare directly with a student trained without a
teacher (run `lmforge train` with the same options for that baseline).

examples:
  lmforge distill --teacher runs/train --data runs/data --out runs/student --student-layers 2 --steps 300
  lmforge distill --teacher runs/train --data runs/data --out runs/student --temperature 4 --alpha 0.9 \\
      --preset tiny --model.d-model 96 --model.n-head 4
  lmforge distill --teacher runs/int8 --data runs/data --out runs/student   # a quantised teacher works too
  lmforge eval --checkpoint runs/student --data runs/data                    # bits per byte of the student
"""

DISTILL_FLAGS = ("teacher", "temperature", "alpha", "student_layers")


def _main(args: argparse.Namespace) -> int:
    from lmforge.cli.train import train_and_report

    given = vars(args)
    teacher, temperature, alpha, layers = (given.pop(name) for name in DISTILL_FLAGS)
    if given.get("objective", "distill") != "distill":
        raise UserError(f"lmforge distill trains with the distill objective, not {given['objective']}",
                        fix="drop --objective, or use `lmforge train --objective ...`")
    if teacher is None and not given.get("resume"):  # a resumed run has its teacher in its config.yaml
        raise UserError("no teacher checkpoint given", fix="pass --teacher CKPT (a checkpoint or run directory)")
    if teacher is not None and not Path(teacher).exists():
        raise UserError("teacher checkpoint not found", where=teacher,
                        fix="pass a checkpoint directory or a run directory made by `lmforge train`")
    if temperature is not None and temperature <= 0:
        raise UserError(f"--temperature is {temperature:g}, but it divides the logits and must be > 0",
                        fix="pass a temperature such as 2 (> 1 softens both distributions)")
    if alpha is not None and not 0 <= alpha <= 1:
        raise UserError(f"--alpha is {alpha:g}, but it weighs the KL term against the cross-entropy",
                        fix="pass a value in [0, 1], e.g. 0.5")
    given["objective"] = "distill"
    for name, value in (("teacher", teacher), ("temperature", temperature), ("alpha", alpha)):
        if value is not None:  # else the objective's default (or a resumed run's own value)
            given[f"objective_options.{name}"] = value
    if layers is not None:
        given["model.n_layer"] = layers
    return train_and_report(args)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def register(sub) -> None:
    parser = add_verb(sub, "distill", TrainConfig, _main, help="distil a teacher checkpoint into a smaller student",
                      description=DESCRIPTION)
    group = parser.add_argument_group("distillation")
    group.add_argument("--teacher", metavar="CKPT", default=None,
                       help="teacher checkpoint or run directory; it must have the data's tokenizer")
    group.add_argument("--temperature", type=float, default=None, metavar="T",
                       help="softmax temperature of both distributions in the KL term, > 0 (default: 2)")
    group.add_argument("--alpha", type=float, default=None,
                       help="weight of the KL term; 1 - alpha weighs the cross-entropy on the text (default: 0.5)")
    group.add_argument("--student-layers", type=_positive_int, default=None, metavar="N",
                       help="the student's layers (= --model.n-layer N; default: the preset's)")
    add_no_verify(parser, "--resume")
