"""n-gram vs LSTM vs Transformer on one split of prepared data: one table, one bar chart, one JSON.

    from lmforge.config import resolve
    from lmforge.recipes.compare import CompareConfig, compare

    result = compare(resolve(CompareConfig, data="data/prepared", steps=200))
    for entry in result.entries:
        print(entry.name, entry.score.ppl, entry.score.bpb)

The n-gram model (modified Kneser-Ney, `lmforge.models.ngram`) is fitted on the train split. The LSTM and the
Transformer are loaded from `lstm_checkpoint` / `checkpoint` when given, else trained here by the one training loop
(`lmforge.train.train`) for `steps` steps into OUT/lstm and OUT/transformer. Those runs resume when they exist, so
re-running the comparison (another n-gram order, another split) trains nothing again; delete them to retrain.
Every model is scored on the same split: the neural ones by `evaluate_checkpoint` in windows of `seq_len` tokens,
the n-gram on the whole stream (each token given its n-1 predecessors). Bits per byte make the numbers comparable
with any other tokenizer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.config import Config, field
from lmforge.device import DEVICES
from lmforge.errors import UserError
from lmforge.eval.perplexity import Score
from lmforge.models.registry import SCORE, Kind, families_that, kind_of, require
from lmforge.runtime import PRECISIONS

DEFAULT_SEQ_LEN = 128  # --compare trains and scores every neural model on windows of this many tokens
# Peak learning rates of short runs: an LSTM tolerates (and, in a few hundred steps, needs) a higher one.
DEFAULT_LR = {"lstm": 1e-2, "transformer": 1e-3}
LABELS = {Kind.DECODER: "Transformer", Kind.RECURRENT: "LSTM"}  # the table's row names, by kind


@dataclass
class CompareConfig(Config):
    data: str | None = field(None, "prepared data directory (made by `lmforge prepare`)")
    split: str = field("val", "split to score on (made by prepare: train, val, test)")
    checkpoint: str | None = field(None, "checkpoint directory, or a run directory (its best checkpoint), to score; "
                                         "with --compare the Transformer (default: train one)")
    lstm_checkpoint: str | None = field(None, "with --compare: the LSTM's checkpoint or run directory (default: "
                                              "train one)")
    ngram_order: int = field(3, "with --compare: order of the Kneser-Ney n-gram baseline (1 = unigram)", min=1)
    out: str = field("runs/compare", "with --compare: models trained here go to OUT/lstm and OUT/transformer, "
                                     "the results to OUT/compare.json and OUT/compare.png")
    steps: int = field(200, "with --compare: optimizer steps for each model trained here", min=1)
    lr: float | None = field(None, f"with --compare: peak learning rate of the models trained here (default: "
                                   f"{DEFAULT_LR['lstm']:g} for the LSTM, {DEFAULT_LR['transformer']:g} for the "
                                   f"Transformer)", min=0)
    transformer_preset: str = field("tiny", "with --compare: model preset of the Transformer trained here")
    lstm_preset: str = field("lstm-tiny", "with --compare: model preset of the LSTM trained here")
    seq_len: int | None = field(None, f"tokens per window (default: the model's max_seq_len, at most the length "
                                      f"it was trained at; with --compare {DEFAULT_SEQ_LEN}, for training and "
                                      f"scoring every model)", min=1)
    batch_size: int = field(16, "sequences per batch (scoring, and training with --compare)", min=1)
    max_batches: int = field(0, "score at most this many batches (0 = the whole split)", min=0)
    device: str = field("auto", "device: auto picks CUDA, then Apple MPS, then the CPU", choices=DEVICES)
    precision: str = field("auto", "auto = bf16 autocast on CUDA, fp32 elsewhere",
                           choices=PRECISIONS)
    seed: int = field(0, "with --compare: seed of the training runs")

    def __post_init__(self) -> None:
        if not self.data:
            raise UserError("no prepared data given", fix="pass --data DIR, a directory made by `lmforge prepare`")


@dataclass
class Entry:
    """One model's line of the comparison."""

    name: str  # "3-gram KN" (modified Kneser-Ney), "LSTM", "Transformer"
    kind: str  # ngram / lstm / transformer
    score: Score
    size: int  # parameters (neural models) or stored n-grams (the n-gram model)
    source: str  # how it came to be: fitted, trained here, loaded
    checkpoint: str | None
    seconds: float  # fitting or training, plus scoring

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, **self.score.to_dict(), "size": self.size,
                "source": self.source, "checkpoint": self.checkpoint, "seconds": round(self.seconds, 2)}


@dataclass
class Comparison:
    data: str
    split: str
    seq_len: int
    entries: list[Entry]
    json: Path
    plot: Path | None  # None when matplotlib is missing


def compare(cfg: CompareConfig) -> Comparison:
    """Fit / train / load the three models, score them on `cfg.split`, write OUT/compare.json and .png."""
    from lmforge.atomic import write_json
    from lmforge.data.loaders import TokenDataset
    from lmforge.models.config import ModelConfig
    from lmforge.models.io import CONFIG
    from lmforge.progress import console

    # Mistakes in the inputs fail here, before minutes of training.
    held_out = TokenDataset.open(cfg.data, cfg.split)
    given = {"lstm": _given(cfg.lstm_checkpoint, "--lstm-checkpoint", cfg.lstm_preset, held_out),
             "transformer": _given(cfg.checkpoint, "--checkpoint", cfg.transformer_preset, held_out)}
    seq_len = cfg.seq_len or DEFAULT_SEQ_LEN
    for path in filter(None, given.values()):
        # A Transformer cannot read past its position table: every model is scored on windows it can read.
        model_cfg = ModelConfig.load(path / CONFIG)
        # By default, no window longer than a model was trained at (its later positions never learned).
        limit = (cfg.seq_len is None and model_cfg.trained_seq_len) or model_cfg.max_seq_len
        if kind_of(model_cfg) != Kind.RECURRENT and limit < seq_len:
            console.print(f"[yellow]{path} {'was trained at' if limit != model_cfg.max_seq_len else 'reads at most'} "
                          f"{limit} tokens: every model is scored on windows of {limit}[/yellow]")
            seq_len = limit
    out = Path(cfg.out)
    entries = [_ngram_entry(cfg, held_out)]
    for kind, preset in (("lstm", cfg.lstm_preset), ("transformer", cfg.transformer_preset)):
        entries.append(_neural_entry(cfg, kind, given[kind], preset, out / kind, seq_len, held_out))

    result = {"data": str(cfg.data), "split": cfg.split, "seq_len": seq_len,
              "models": [e.to_dict() for e in entries]}
    write_json(out / "compare.json", result)
    plot = plot_comparison(entries, out / "compare.png", title=f"{cfg.data}: {cfg.split} split")
    return Comparison(str(cfg.data), cfg.split, seq_len, entries, out / "compare.json", plot)


def _given(checkpoint: str | None, flag: str, preset: str, held_out: Any) -> Path | None:
    """The checkpoint directory to load, checked against the data; None (after checking the preset) to train."""
    from lmforge.checkpoints import resolve_checkpoint
    from lmforge.eval.perplexity import check_data_matches
    from lmforge.models.config import ModelConfig, get_preset
    from lmforge.models.io import CONFIG

    if checkpoint is None:
        get_preset(preset)
        return None
    if not Path(checkpoint).exists():
        raise UserError("checkpoint not found", where=checkpoint,
                        fix=f"pass an existing checkpoint or run directory to {flag}, or leave it out to train one")
    path = resolve_checkpoint(checkpoint)
    model_cfg = ModelConfig.load(path / CONFIG)
    scorers = ", ".join(f.name for f in families_that(SCORE))
    require(model_cfg, SCORE, needed_for="perplexity", where=path,
            fix=f"pass a checkpoint of family {scorers} to {flag}")
    check_data_matches(path, model_cfg, held_out)
    return path


def _ngram_entry(cfg: CompareConfig, held_out: Any) -> Entry:
    from lmforge.data.loaders import TokenDataset
    from lmforge.eval.perplexity import evaluate_ngram
    from lmforge.models.ngram import NGramLM

    t0 = time.perf_counter()
    train = TokenDataset.open(cfg.data, "train")
    model = NGramLM(cfg.ngram_order, train.vocab_size).fit(train.window(0, len(train)))
    score = evaluate_ngram(model, held_out.window(0, len(held_out)), held_out.bytes_per_token)
    return Entry(name=f"{cfg.ngram_order}-gram KN", kind="ngram", score=score,
                 size=sum(len(o.keys) for o in model.orders), source=f"fit on {_count(model.train_tokens)} tokens",
                 checkpoint=None, seconds=time.perf_counter() - t0)


def _neural_entry(cfg: CompareConfig, kind: str, checkpoint: Path | None, preset: str, run_dir: Path,
                  seq_len: int, held_out: Any) -> Entry:
    from lmforge.eval.perplexity import evaluate_checkpoint
    from lmforge.models.config import ModelConfig
    from lmforge.models.io import CONFIG

    t0 = time.perf_counter()
    path = checkpoint or _train(cfg, kind, preset, run_dir, seq_len, held_out)
    model_cfg = ModelConfig.load(path / CONFIG)
    source = f"loaded ({model_cfg.family})" if checkpoint else f"{preset}, {cfg.steps} steps"
    scored = evaluate_checkpoint(path, cfg.data, cfg.split, seq_len=seq_len, batch_size=cfg.batch_size,
                                 max_batches=cfg.max_batches, device=cfg.device, precision=cfg.precision)
    return Entry(name=LABELS.get(kind_of(model_cfg), model_cfg.family), kind=kind, score=scored.score,
                 size=model_cfg.num_params(), source=source, checkpoint=str(path),
                 seconds=time.perf_counter() - t0)


def _train(cfg: CompareConfig, kind: str, preset: str, run_dir: Path, seq_len: int, held_out: Any) -> Path:
    """Train (or finish, or reuse) a short run of `preset` in `run_dir`; its newest checkpoint."""
    from lmforge.checkpoints import resolve_checkpoint
    from lmforge.config import resolve
    from lmforge.eval.perplexity import check_data_matches
    from lmforge.models.config import ModelConfig
    from lmforge.models.io import CONFIG
    from lmforge.progress import console
    from lmforge.train import TrainConfig, train
    from lmforge.train.checkpoint import Checkpointer, CheckpointMismatch

    fix = f"pass another --out, or delete {run_dir} to train it again"
    resume = Checkpointer(run_dir / "checkpoints").latest() is not None
    if resume:  # a run of an earlier comparison: only worth continuing on data of the same tokenizer
        old = resolve_checkpoint(run_dir)
        try:
            check_data_matches(old, ModelConfig.load(old / CONFIG), held_out)
        except UserError as e:
            raise UserError(f"{run_dir} holds a model trained on other data ({e.what})", fix=fix) from None
    console.print(f"[bold]{'checking' if resume else 'training'} {preset} ({cfg.steps} steps) in {run_dir}[/bold]")
    # The run's own final evaluation then covers the same windows as the comparison's (on the val split).
    tcfg = resolve(TrainConfig, data=cfg.data, out=str(run_dir), preset=preset, steps=cfg.steps,
                   batch_size=cfg.batch_size, seq_len=seq_len, optim__lr=cfg.lr or DEFAULT_LR[kind],
                   device=cfg.device, precision=cfg.precision, seed=cfg.seed, resume=resume, eval_every=0,
                   eval_batches=cfg.max_batches, checkpoint_every=cfg.steps, keep_last=1,
                   log_every=max(1, cfg.steps // 10), tensorboard=False)
    try:
        result = train(tcfg)
    except CheckpointMismatch as e:
        raise UserError(f"{run_dir} holds a run with other settings ({e.what})", where=e.where, fix=fix) from None
    if result.checkpoint is None:
        raise RuntimeError(f"training into {run_dir} wrote no checkpoint")
    return result.checkpoint


def plot_comparison(entries: list[Entry], path: Path, title: str = "") -> Path | None:
    """Bar charts of perplexity and bits per byte, one bar per model, as a PNG (None without matplotlib)."""
    from lmforge.atomic import atomic_file
    from lmforge.progress import console

    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        console.print("[yellow]matplotlib is not installed: no compare.png (pip install 'lmforge[train]')[/yellow]")
        return None
    # Figure + Agg canvas directly: no pyplot, so no global backend or figure state is touched.
    fig = Figure(figsize=(9, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    names = [e.name for e in entries]
    colors = ["#8c8c8c", "#d9822b", "#2b6cb0", "#2f855a"][: len(entries)]
    for i, (label, values) in enumerate((("perplexity (lower is better)", [e.score.ppl for e in entries]),
                                         ("bits per byte (lower is better)",
                                          [e.score.bpb or 0.0 for e in entries]))):
        ax = fig.add_subplot(1, 2, i + 1)
        bars = ax.bar(range(len(names)), values, color=colors)
        ax.bar_label(bars, labels=[f"{v:,.1f}" if i == 0 else f"{v:.3f}" for v in values], fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(path) as f:
        fig.savefig(f, format="png")
    return path


def comparison_table(result: Comparison) -> Any:
    """The comparison as a rich Table."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"{result.split} split of {result.data}", box=box.SIMPLE_HEAD,
                  caption=f"neural models read windows of {result.seq_len} tokens; the n-gram model, each token's "
                          f"n-1 predecessors")
    for name in ("model", "size", "source", "ppl", "bits/byte", "tokens", "time"):
        wrap = name in ("model", "source")  # the numbers never wrap; on a narrow terminal, these do
        table.add_column(name, justify="left" if wrap else "right", no_wrap=not wrap)
    best = min(e.score.loss for e in result.entries)
    for e in result.entries:
        table.add_row(e.name, _count(e.size), e.source, f"{e.score.ppl:,.2f}",
                      "-" if e.score.bpb is None else f"{e.score.bpb:.3f}", f"{e.score.tokens:,}",
                      f"{e.seconds:.0f}s", style="bold green" if e.score.loss == best else None)
    return table


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)
