"""Training objectives: what a batch is, and how `(model, batch)` becomes a loss and metrics.

The loop (`lmforge.train.trainer`) knows nothing of tokens, labels or masks: it asks the objective for a stream of
training batches, calls `objective.forward(model, batch)` for the loss, and for evaluation sums the additive
statistics the objective returns over a pass of held-out batches and lets the objective turn the totals into
metrics. A new objective (masked LM, span corruption, seq2seq, contrastive, classification, ...) is one module in
this package with a class decorated `@register("name")`; it is found by `--objective name` without touching the
loop.

An objective declares the model kinds it trains (`kinds = (Kind.ENCODER,)`, and `head` when it trains a task head
rather than the language-model one), checked once, here, when it is built. Its options are its own dataclass,
defined in its module and registered with it (`@register("mlm", options=MaskedLMOptions)`): a subclass of
`Options` whose fields are `lmforge.config.field`s and whose `problems()` lists what is wrong with their values.
They are the `objective_options` section of a training config (`--objective-options.mlm-probability 0.2`, or
`objective_options: {mlm_probability: 0.2}` in YAML), shown in `lmforge train --help` under the objective's name;
options several objectives share (the pairs file and its columns) are a dataclass in `options.py` that theirs
inherit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor, nn

from lmforge.config import Config
from lmforge.errors import UserError
from lmforge.models.registry import FAMILIES, Kind, family, kind_of, require_kind

if TYPE_CHECKING:
    from lmforge.models.config import ModelConfig
    from lmforge.runtime import Runtime
    from lmforge.train.config import TrainConfig


@dataclass
class Output:
    """What `Objective.forward` returns.

    `loss` is what the optimizer minimises (a mean over this batch's units). `sums` are additive statistics,
    summed over batches (and ranks) to give exact metrics over a whole split: at least `loss` (the summed loss)
    and `count` (the units it sums over, e.g. predicted tokens); `tokens` (input tokens processed) feeds the
    throughput meter when present.
    """

    loss: Tensor
    sums: dict[str, Tensor | float]


@dataclass
class Options(Config):
    """Base of an objective's options: none. A subclass adds fields and extends `problems`."""

    def problems(self) -> list[str]:
        """What is wrong with the values, one phrase each."""
        return []

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise UserError("invalid objective options: " + "; ".join(problems),
                            fix="see the objective_options sections of `lmforge train --help`")


class Objective:
    """Base class of training objectives. Subclasses implement the four methods that raise below."""

    name: ClassVar[str] = ""
    options: ClassVar[type[Options]] = Options  # set by `register`
    kinds: ClassVar[tuple[Kind, ...]] = ()  # the model kinds this objective trains
    head: ClassVar[str] = "lm"  # the head it trains, which the model's family must have (`Family.heads`)
    # True when the training stream is the same global batches whatever the number of processes (rank r takes
    # its rows of one batch drawn from a generator shared by all ranks): its position is then the same on every
    # rank, and a run resumes exactly on another world size. False: each rank draws its own batches.
    shared_stream: ClassVar[bool] = False

    def __init__(self, cfg: TrainConfig, rt: Runtime) -> None:
        self.cfg, self.rt = cfg, rt
        check_model(type(self), cfg.model)
        if self.head != "lm":
            cfg.model.head = self.head  # the task head this objective trains (classification adds its labels)
        self.opts: Any = cfg.objective_options  # an instance of `self.options` (TrainConfig sees to it)
        # Tokenizer files copied into every checkpoint so that it is self-contained (None: none to copy).
        self.tokenizer_dir: Path | None = None

    def build_model(self) -> nn.Module:
        """The model this objective trains, randomly initialised on the CPU (override to add a head)."""
        from lmforge.models import build_model

        return build_model(self.cfg.model)

    def train_batches(self) -> Iterator[Any]:
        """An endless stream of training batches (CPU tensors), resumable through `state_dict`."""
        raise NotImplementedError

    def eval_batches(self) -> Iterable[Any] | None:
        """A fresh, deterministic pass over held-out batches (at most `cfg.eval_batches`), or None if none."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Any) -> Output:
        raise NotImplementedError

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Metrics from the totals of `Output.sums` over an evaluation pass."""
        raise NotImplementedError

    def metric_names(self) -> tuple[str, ...] | None:
        """The metrics `summarize` reports, so that `--select-by` is checked before training (None: not declared,
        checked at the first evaluation)."""
        return None

    # Position of the training stream, saved in checkpoints for exact resume.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def to_device(self, batch: Any) -> Any:
        """Move a batch (tensors in tuples, lists or dicts) to the run's device, asynchronously from pinned memory."""
        if isinstance(batch, Tensor):
            if self.rt.device.type == "cuda":
                return batch.pin_memory().to(self.rt.device, non_blocking=True)
            return batch.to(self.rt.device)
        if isinstance(batch, tuple | list):
            return type(batch)(self.to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self.to_device(v) for k, v in batch.items()}
        return batch


def train_only(model: nn.Module, *used: nn.Module) -> nn.Module:
    """Freeze every parameter of `model` outside the modules `used` by the objective (heads it never calls).

    They would get no gradient anyway, so training is unchanged; DDP needs it, because it waits for a gradient of
    every trainable parameter before it reduces them. A tied weight stays trainable if any module using it is used.
    """
    keep = {id(p) for module in used for p in module.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)
    return model


OBJECTIVES: dict[str, type[Objective]] = {}


def register(name: str, options: type[Options] = Options):
    """Class decorator: make an `Objective` subclass available as `--objective name`, with its options dataclass."""
    def deco(cls: type[Objective]) -> type[Objective]:
        cls.name, cls.options = name, options
        OBJECTIVES[name] = cls
        return cls
    return deco


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def get_objective(name: str) -> type[Objective]:
    _discover()
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective '{name}'", fix=f"choose one of {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


def options_classes() -> dict[str, type[Options]]:
    """{objective: its options dataclass}, every objective (the variants of `TrainConfig.objective_options`)."""
    _discover()
    return {name: OBJECTIVES[name].options for name in sorted(OBJECTIVES)}


def _kinds(kinds: Iterable[Kind]) -> str:
    return " or ".join(k.value.replace("_", "-") for k in kinds)


def check_model(objective: type[Objective], model: ModelConfig) -> None:
    """One line when `model` is not of a kind `objective` trains, or its family lacks the head it trains."""
    _discover()
    kind = kind_of(model)
    able = [f for f in FAMILIES.values() if f.kind in objective.kinds and objective.head in f.heads]
    presets = [f.preset for f in able]
    others = [name for name in sorted(OBJECTIVES) if kind in OBJECTIVES[name].kinds and
              OBJECTIVES[name].head in family(model).heads]
    fix = f"pass --preset {presets[0]}" + (f" (or another: {', '.join(presets[1:])})" if len(presets) > 1 else "")
    if others:
        fix += f", or an objective for {_kinds([kind])} models ({', '.join(others)})"
    require_kind(model, objective.kinds, user=f"objective '{objective.name}'", fix=fix)
    if objective.head == "lm" and model.head != "lm":  # a task head is the objective's to choose, not the model's
        raise UserError(f"objective '{objective.name}' trains the language-model head, but the model config asks "
                        f"for a {model.head} head", fix="leave model.head and model.labels out, or pass --objective "
                                                        "classification (it sets them from its labelled file)")
    if objective.head not in family(model).heads:
        raise UserError(f"objective '{objective.name}' trains a {objective.head} head, which family "
                        f"'{model.family}' models lack (they have: {', '.join(family(model).heads)})", fix=fix)


def total(sums: Iterable[dict[str, Tensor | float]]) -> dict[str, float]:
    """Add up `Output.sums` dicts; tensors are summed on their device and read once at the end."""
    acc: dict[str, Tensor | float] = {}
    for s in sums:
        for k, v in s.items():
            v = v.detach() if isinstance(v, Tensor) else v
            acc[k] = acc[k] + v if k in acc else v
    return {k: float(v.item()) if isinstance(v, Tensor) else float(v) for k, v in acc.items()}


__all__ = ["OBJECTIVES", "Objective", "Options", "Output", "check_model", "get_objective", "options_classes",
           "register", "total", "train_only"]
