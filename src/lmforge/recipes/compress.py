"""Compression workflows over several layers: quantise a checkpoint and report what it cost and bought; prune it at
several sparsities and print the perplexity each leaves, with an optional recovery fine-tune through the trainer.

    from lmforge.recipes.compress import QuantizeConfig, quantize_checkpoint

    report = quantize_checkpoint(QuantizeConfig(checkpoint="runs/train", bits=8, out="runs/int8", data="runs/data"))

The layer swap and the masks are `lmforge.compress`; perplexity is `eval.perplexity`; decode speed is the one
generation loop (`infer.generate.generate_ids`, greedy, batch 1); recovery is `lmforge.train` with `init_from`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmforge.checkpoints import load_model, resolve_checkpoint
from lmforge.compress.prune import SCOPES, PruneSpec, prune_model, sparsity
from lmforge.compress.quantize import QuantizationSpec, check_quantizable, quantize_model, save_quantized
from lmforge.config import Config, field
from lmforge.device import DEVICES
from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.io import WEIGHTS, save_model
from lmforge.models.registry import GENERATE, SCORE, can, require


@dataclass
class Measure:
    """One model's figures: bytes of model.safetensors, perplexity / bits per byte on the data (None without
    data), greedy batch-1 decode speed (None for a model that cannot generate)."""

    name: str
    bytes: int
    ppl: float | None = None
    bpb: float | None = None
    tokens_per_s: float | None = None
    sparsity: float | None = None


@dataclass
class QuantizeReport:
    checkpoint: Path
    out: Path
    spec: QuantizationSpec
    before: Measure
    after: Measure


def decode_tokens_per_second(model: nn.Module, new_tokens: int = 64, prompt: list[int] | None = None,
                             repeats: int = 2) -> float:
    """Greedy batch-1 decode speed with the KV cache: new tokens per second, best of `repeats` (after a warm-up)."""
    from lmforge.infer.generate import GenerationConfig, generate_ids

    prompt = prompt or [0]
    new_tokens = min(new_tokens, model.cfg.max_seq_len - len(prompt))
    cfg = GenerationConfig(temperature=0.0, max_new_tokens=new_tokens)
    generate_ids(model, [prompt], GenerationConfig(temperature=0.0, max_new_tokens=2))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate_ids(model, [prompt], cfg)
        best = min(best, time.perf_counter() - t0)
    return new_tokens / best


def _score(model: nn.Module, cfg: ModelConfig, data: Path, seq_len: int | None, max_batches: int
           ) -> tuple[float, float | None]:
    from lmforge.data.loaders import TokenDataset
    from lmforge.eval.perplexity import evaluate_lm

    ds = TokenDataset.open(data, "val")
    score = evaluate_lm(model, ds, seq_len=seq_len or cfg.trained_seq_len or cfg.max_seq_len, batch_size=8,
                        max_batches=max_batches)
    return score.ppl, score.bpb


def _check_data(ckpt: Path, cfg: ModelConfig, data: str | None) -> Path | None:
    if data is None:
        return None
    from lmforge.data.loaders import TokenDataset
    from lmforge.eval.perplexity import check_data_matches

    require(cfg, SCORE, needed_for="perplexity", where=ckpt)
    check_data_matches(ckpt, cfg, TokenDataset.open(data, "val"))
    return Path(data)


def _measure(name: str, model: nn.Module, cfg: ModelConfig, size: int, data: Path | None, seq_len: int | None,
             max_batches: int, new_tokens: int, prompt: list[int]) -> Measure:
    m = Measure(name, size)
    if data is not None:
        m.ppl, m.bpb = _score(model, cfg, data, seq_len, max_batches)
    if new_tokens and can(cfg, GENERATE) and not cfg.labels:
        m.tokens_per_s = decode_tokens_per_second(model, new_tokens, prompt)
    return m


def _prompt(ckpt: Path) -> list[int]:
    """`<eos>`, the start of a document as decoders were trained on it; id 0 without a tokenizer."""
    if not (ckpt / "tokenizer.json").is_file():
        return [0]
    from lmforge.data.tokenizer import load_tokenizer, special_token_ids

    return [special_token_ids(load_tokenizer(ckpt)).get("eos", 0)]


# --- quantize ------------------------------------------------------------------------------------------------

@dataclass
class QuantizeConfig(Config):
    out: str | None = field(None, "output checkpoint directory (an earlier checkpoint there is replaced)")
    bits: int = field(8, "weight bits: 8 (one scale per output channel) or 4 (a scale and offset per group)")
    group_size: int | None = field(None, "int4: input columns per group, 32, 64, 128 or 256 (default 64)")
    data: str | None = field(None, "prepared data (encoded with the checkpoint's tokenizer): perplexity before "
                                    "and after on its val split")
    max_batches: int = field(0, "val batches to score (0 = the whole split)", min=0)
    seq_len: int | None = field(None, "tokens per scored window (default: the length the model was trained at)",
                                 min=1)
    new_tokens: int = field(64, "greedy batch-1 tokens to time the decode speed with (0 = skip it)", min=0)
    threads: int | None = field(None, "torch intra-op threads for the measurements (default: torch's)", min=1)


def quantize_checkpoint(checkpoint: str | Path, qc: QuantizeConfig) -> QuantizeReport:
    """Quantise `checkpoint` into `qc.out` and measure both: size on disk, perplexity, decode speed."""
    spec = QuantizationSpec(bits=qc.bits, group_size=qc.group_size)  # bad bits / group size: one line, first
    if not qc.out:
        raise UserError("no output directory given", fix="pass --out DIR")
    if not Path(checkpoint).exists():
        raise UserError("checkpoint not found", where=checkpoint,
                        fix="pass a checkpoint directory or a run directory made by `lmforge train`")
    ckpt, out = resolve_checkpoint(checkpoint), Path(qc.out)
    if out.resolve() == ckpt.resolve():
        raise UserError("the output directory would replace the input", where=out, fix="choose another --out")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise UserError("output path exists and is not a checkpoint directory; refusing to replace it", where=out,
                        fix="choose a new --out, or remove it first")
    model, cfg = load_model(ckpt)
    check_quantizable(model, ckpt)
    data = _check_data(ckpt, cfg, qc.data)
    if qc.threads:
        torch.set_num_threads(qc.threads)
    quantized = copy.deepcopy(model)
    spec = quantize_model(quantized, spec, ckpt)
    save_quantized(out, quantized, cfg, spec, tokenizer_dir=ckpt)
    del quantized
    reloaded, _ = load_model(out)  # measured as every later verb will load it: through the one loader
    prompt = _prompt(ckpt)
    before = _measure(str(next(model.parameters()).dtype).removeprefix("torch."), model, cfg,
                      (ckpt / WEIGHTS).stat().st_size, data, qc.seq_len, qc.max_batches, qc.new_tokens, prompt)
    after = _measure(spec.name, reloaded, cfg, (out / WEIGHTS).stat().st_size, data, qc.seq_len, qc.max_batches,
                     qc.new_tokens, prompt)
    return QuantizeReport(ckpt, out, spec, before, after)


# --- prune ---------------------------------------------------------------------------------------------------

@dataclass
class PruneConfig(Config):
    data: str | None = field(None, "prepared data (encoded with the checkpoint's tokenizer): perplexity on its val "
                                    "split, and the recovery fine-tune's training text")
    levels: list[str] = field(default_factory=lambda: ["0", "0.3", "0.5", "0.7", "2:4"], repeat=True,
                               help="a sparsity in [0, 1) or 2:4, one table row each (repeat the flag)")
    scope: str = field("global", "magnitude pruning: one threshold over all layers (global) or the same fraction "
                                  "of each layer (layer)", choices=SCOPES)
    out: str | None = field(None, "write each pruned (and recovered) checkpoint under OUT/<level>/")
    recover_steps: int = field(0, "fine-tune each pruned model this many steps with the trainer (--init-from), "
                                   "the pruned weights held at zero throughout (0 = no recovery)", min=0)
    recover_lr: float = field(3e-4, "recovery fine-tune: peak learning rate", gt=0)
    batch_size: int = field(8, "recovery fine-tune: sequences per step", min=1)
    max_batches: int = field(0, "val batches to score (0 = the whole split)", min=0)
    seq_len: int | None = field(None, "tokens per window (default: the length the model was trained at)", min=1)
    device: str = field("auto", "recovery fine-tune: device", choices=DEVICES)


@dataclass
class PruneRow:
    level: str
    sparsity: float
    ppl: float
    bpb: float | None
    recovered_ppl: float | None = None
    recovered_bpb: float | None = None
    recovered_sparsity: float | None = None
    checkpoint: Path | None = None


def _level_dir(level: str) -> str:
    return "2of4" if level == "2:4" else f"sparsity{float(level):.2f}"


def prune_checkpoint(checkpoint: str | Path, pc: PruneConfig) -> list[PruneRow]:
    """The sparsity -> perplexity table of `checkpoint` on `pc.data`'s val split, one row per level."""
    specs = [PruneSpec.parse(level, pc.scope) for level in pc.levels]  # every bad level refused before any work
    if not pc.data:
        raise UserError("no prepared data given", fix="pass --data DIR, encoded with the checkpoint's tokenizer")
    if pc.recover_steps and not pc.out:
        raise UserError("a recovery fine-tune writes training runs", fix="pass --out DIR with --recover-steps")
    if not Path(checkpoint).exists():
        raise UserError("checkpoint not found", where=checkpoint,
                        fix="pass a checkpoint directory or a run directory made by `lmforge train`")
    ckpt = resolve_checkpoint(checkpoint)
    model, cfg = load_model(ckpt)
    check_quantizable(model, ckpt)  # the same layers: a Transformer's linear layers
    data = _check_data(ckpt, cfg, pc.data)
    rows = []
    for level, spec in zip(pc.levels, specs):
        pruned = copy.deepcopy(model)
        prune_model(pruned, spec)
        ppl, bpb = _score(pruned, cfg, data, pc.seq_len, pc.max_batches)
        row = PruneRow(spec.name, sparsity(pruned), ppl, bpb)
        if pc.out:
            row.checkpoint = save_model(Path(pc.out) / _level_dir(level) / "pruned", pruned, cfg, ckpt)
        if pc.recover_steps and (spec.sparsity is None or spec.sparsity > 0):
            recovered = _recover(row.checkpoint, Path(pc.out) / _level_dir(level), pc, cfg)
            row.recovered_ppl, row.recovered_bpb = _score(recovered, cfg, data, pc.seq_len, pc.max_batches)
            row.recovered_sparsity = sparsity(recovered)
        rows.append(row)
    return rows


def _recover(pruned: Path, out: Path, pc: PruneConfig, cfg: ModelConfig) -> nn.Module:
    """Fine-tune a pruned checkpoint with the one trainer (`init_from`), its zeros held at zero throughout
    (`finetune.keep_zeros`: their gradients are masked, so only the kept weights move), and save the result as
    OUT/<level>/recovered."""
    from lmforge.config import resolve
    from lmforge.train import TrainConfig, train

    seq_len = pc.seq_len or cfg.trained_seq_len or cfg.max_seq_len
    run = train(resolve(TrainConfig, data=str(pc.data), out=str(out / "recovery"), init_from=str(pruned),
                        steps=pc.recover_steps, batch_size=pc.batch_size, seq_len=seq_len, optim__lr=pc.recover_lr,
                        eval_every=0, eval_batches=8, checkpoint_every=pc.recover_steps, keep_last=1,
                        log_every=max(pc.recover_steps // 4, 1), tensorboard=False, device=pc.device,
                        finetune__keep_zeros=True))
    model, _ = load_model(run.checkpoint)
    save_model(out / "recovered", model, cfg, pruned)
    return model


def report_dict(report: QuantizeReport) -> dict[str, Any]:
    from dataclasses import asdict

    return {"checkpoint": str(report.checkpoint), "out": str(report.out), "bits": report.spec.bits,
            "group_size": report.spec.group_size, "before": asdict(report.before), "after": asdict(report.after)}


__all__ = ["Measure", "PruneConfig", "PruneRow", "QuantizeConfig", "QuantizeReport", "decode_tokens_per_second",
           "prune_checkpoint", "quantize_checkpoint", "report_dict"]
