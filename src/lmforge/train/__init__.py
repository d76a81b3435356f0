"""Training: one loop (`trainer.train`) for every objective, with checkpoints, schedules and logging sinks.

    from lmforge.config import resolve
    from lmforge.train import TrainConfig, train

    result = train(resolve(TrainConfig, data="data/prepared", steps=200, model__n_layer=2))
    print(result.val["val_loss"], result.checkpoint)

`train` and `TrainResult` are imported on first use, so that reading the config (the CLI's `--help`) does not
load the loop.
"""

from __future__ import annotations

from typing import Any

from lmforge.train.config import OptimConfig, TrainConfig

__all__ = ["OptimConfig", "TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "TrainResult"):
        from lmforge.train import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'lmforge.train' has no attribute {name!r}")
