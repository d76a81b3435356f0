"""`quickstart`: the whole path from raw text to a model that writes, in about five minutes on a laptop CPU.

1. prepare the built-in corpus (Python's own documentation): clean it, train a byte-level BPE tokenizer, encode;
2. train a small GPT on it (the `tiny` preset under the `fast` training recipe: Muon, QK-norm, ReLU², untied
   head, logit soft-cap, warmup-stable-decay) with periodic validation, for as many steps as fit in a time budget
   on this machine (measured with a few real steps first);
3. fit unigram, bigram and trigram Kneser-Ney models on the same training tokens and compare validation
   perplexity and bits per byte: a Transformer that cannot clearly beat the unigram has learned nothing worth
   keeping, and the bigram and trigram show how far a few minutes of CPU training get;
4. sample a few continuations, and say where everything is and what to try next.

Every step is the same library call the individual verbs use (`prepare`, `train`, `generate`), so the
quickstart is also a readable script of the pipeline.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from lmforge.config import Config, field, resolve
from lmforge.device import DEVICES
from lmforge.errors import UserError
from lmforge.progress import console


@dataclass
class QuickstartConfig(Config):
    corpus: list[str] = field(default_factory=lambda: ["builtin:python-docs"],
                              help="text to learn from (files, directories, globs; default: the built-in corpus)")
    out: str = field("runs/quickstart", "where data/, train/ and summary.json go (replaced on every run)")
    vocab_size: int = field(4096, "byte-level BPE vocabulary size", min=1)
    preset: str = field("tiny", "model preset (tiny: 4 layers, 128 wide)")
    recipe: str = field("fast", "training recipe (as `lmforge train --recipe`): fast, nanogpt-cpu, ...; none: "
                                "`lmforge train`'s defaults (AdamW, cosine, the GPT-2-style preset)")
    minutes: float = field(3.5, "training time budget: the number of steps is set from the speed measured on "
                                "this machine in a few warm-up steps", gt=0)
    steps: int = field(0, "training steps (0 = as many as fit in --minutes)", min=0)
    max_steps: int = field(3000, "upper bound on the steps chosen from --minutes", min=1)
    batch_size: int = field(16, "sequences per step", min=1)
    seq_len: int = field(128, "tokens per sequence", min=1)
    lr: float | None = field(None, "peak learning rate (of AdamW; default: the recipe's, or 2e-3 without one)",
                             min=0)
    baseline_orders: list[int] = field(default_factory=lambda: [1, 2, 3],
                                       help="n-gram baselines fitted on the same tokens (1 = unigram, 2 = bigram, "
                                            "3 = trigram Kneser-Ney); the Transformer must clearly beat the first",
                                       min=1)
    samples: int = field(3, "continuations to sample at the end", min=0)
    max_new_tokens: int = field(60, "tokens per sample", min=1)
    device: str = field("auto", "device to train on", choices=DEVICES)
    compile: bool | None = field(None, "torch.compile the model (default: on for a time budget of a minute or more, "
                                       "where it pays even on a CPU: benchmarks/compile_cpu.py measured 1.55x "
                                       "faster steps for ~15 s of compilation on 2 cores; off with --steps)")
    seed: int = field(0, "seed for data split, initialisation and sampling")


PROMPTS = ["The list", "A module is", "If the file", "Return the", "This function"]


@dataclass
class QuickstartResult:
    out: Path
    data: Path
    run: Path
    model: Path  # the best checkpoint
    val: dict[str, float]  # the Transformer's final evaluation: val_loss, val_ppl, val_bpb
    baselines: list[dict[str, Any]]  # the n-grams': loss, ppl, bpb, order
    samples: list[str]
    plot: Path | None
    steps: int
    seconds: float


def _step(i: int, text: str) -> None:
    console.rule(f"[bold]{i}/4  {text}", align="left")


def quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    """The whole path, in `cfg.out`, which is this process's alone meanwhile (`lmforge.locks`)."""
    from lmforge.locks import DirectoryLock

    with DirectoryLock(cfg.out, "quickstart"):
        return _quickstart(cfg)


def _quickstart(cfg: QuickstartConfig) -> QuickstartResult:
    from lmforge.checkpoints import load_model
    from lmforge.data.prepare import PrepareConfig, prepare
    from lmforge.data.tokenizer import load_tokenizer, special_token_ids
    from lmforge.eval.perplexity import ngram_baseline
    from lmforge.infer.generate import GenerationConfig, generate
    from lmforge.runtime import local_runtime
    from lmforge.train import TrainConfig, train

    t0 = time.perf_counter()
    out = Path(cfg.out)
    data_dir, run_dir = out / "data", out / "train"
    _start_over(out)

    _step(1, "prepare: clean the corpus, train a tokenizer, encode token shards")
    prepared = prepare(resolve(PrepareConfig, inputs=cfg.corpus, out=str(data_dir), seed=cfg.seed,
                               tokenizer__vocab_size=cfg.vocab_size))
    console.print("\n".join(prepared.summary), highlight=False)

    recipe = {} if cfg.recipe == "none" else {"recipe": cfg.recipe}
    # Compiling costs seconds up front (paid again by the run after the probe) and pays back within a minute.
    # On the CPU, torch.compile writes C++ and needs a compiler: a machine without one trains eagerly.
    compiled = cfg.compile if cfg.compile is not None else (not cfg.steps and cfg.minutes * 60 >= COMPILE_PAYS_S
                                                            and _cpp_compiler_found())
    lr = cfg.lr if cfg.lr is not None else (None if recipe else 2e-3)

    def train_config(steps: int, out: Path, **kw: Any) -> TrainConfig:
        options = dict(eval_every=max(steps // 6, 1), eval_batches=0, checkpoint_every=steps, keep_last=1,
                       log_every=max(steps // 60, 1))
        return resolve(TrainConfig, data=str(data_dir), out=str(out), preset=cfg.preset, steps=steps,
                       batch_size=cfg.batch_size, seq_len=cfg.seq_len, device=cfg.device, seed=cfg.seed,
                       compile=compiled,
                       **recipe, **({"optim__lr": lr} if lr is not None else {}), **{**options, **kw})

    def probe(n: int, out: Path) -> Any:
        return train(train_config(n, out, eval_every=0, log_every=n // 2, tensorboard=False))

    steps = cfg.steps or _steps_for_budget(cfg, probe)
    _step(2, f"train: a '{cfg.preset}' GPT for {steps} steps" + (f" (recipe {cfg.recipe})" if recipe else ""))
    trained = train(train_config(steps, run_dir))
    if trained.best_checkpoint is None or not trained.val:
        raise UserError("the run produced no validated checkpoint", where=run_dir,
                        fix="the corpus is too small to hold out validation text; add text")

    _step(3, "baselines: n-gram models fitted on the same training tokens")
    baselines = [ngram_baseline(data_dir, order=n, split="val") for n in cfg.baseline_orders]
    val = trained.val
    console.print(_comparison(val, baselines), highlight=False)
    verdict = _verdict(val, baselines)
    if verdict:
        console.print(verdict, highlight=False)

    _step(4, "generate: sample from the best checkpoint (KV cache, top-p)")
    rt = local_runtime(cfg.device, "fp32")
    model, _ = load_model(trained.best_checkpoint, rt.device)
    tok = load_tokenizer(trained.best_checkpoint)
    prompts = (PROMPTS * (cfg.samples // len(PROMPTS) + 1))[: cfg.samples]
    gen = GenerationConfig(max_new_tokens=cfg.max_new_tokens, temperature=0.8, top_p=0.95, seed=cfg.seed,
                           stop=["\n\n"])
    texts = generate(model, tok, prompts, gen, special_ids=special_token_ids(tok)) if prompts else []
    samples = [p + t for p, t in zip(prompts, texts)]
    for s in samples:
        console.print(Text("> ", style="dim") + Text(s.strip()), highlight=False)

    result = QuickstartResult(out=out, data=data_dir, run=run_dir, model=trained.best_checkpoint, val=val,
                              baselines=baselines, samples=samples, plot=trained.plot, steps=trained.step,
                              seconds=time.perf_counter() - t0)
    _write_summary(result, cfg)
    return result


def _cpp_compiler_found() -> bool:
    """Whether inductor can build its CPU kernels here (it runs $CXX, else the first of these it finds)."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++") if c)


COMPILE_PAYS_S = 60  # the budget from which torch.compile is on by default (benchmarks/compile_cpu.py: ~42 s)
MARKER = ".lmforge-quickstart"  # says a directory was made by quickstart, so a new run may replace its contents


def _start_over(out: Path) -> None:
    """A quickstart always starts over, but only ever deletes what an earlier quickstart made."""
    if out.exists() and not out.is_dir():
        raise UserError("output path exists and is not a directory", where=out, fix="choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError("output directory holds files that quickstart did not make", where=out,
                            fix="choose another --out (quickstart replaces its own outputs only)")
        for name in ("data", "train", "summary.json"):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by `lmforge quickstart`; a new quickstart run replaces data/ and train/\n")


PROBE_STEPS = 16


def probe_speed(metrics: Path) -> tuple[float, float]:
    """(tokens/s, seconds of overhead) from the metrics of a PROBE_STEPS run logged at its half and its end.

    The speed of the second half: the first steps pay for allocation, warm-up and compilation. The overhead is
    what the first half took beyond steady steps, which a new run pays again.
    """
    import json

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    first, second = [r for r in records if r.get("event") == "train"][-2:]
    speed = second["tokens_per_s"]
    return speed, max(0.0, first["tokens"] / first["tokens_per_s"] - first["tokens"] / speed)


def fit_steps(budget_s: float, speed: float, overhead: float, tokens_per_step: int) -> int:
    """Optimizer steps that fit in `budget_s` at `speed` tokens/s after `overhead` seconds; evaluations and
    checkpoints take about a tenth of the time on top."""
    return int(max(0.0, budget_s - overhead) * speed / tokens_per_step / 1.1)


def _steps_for_budget(cfg: QuickstartConfig, run: Any) -> int:
    """Steps that fit in `cfg.minutes` on this machine, from the speed of a few real training steps."""
    import tempfile

    console.print("measuring training speed on this machine ...", highlight=False)
    quiet = os.environ.get("LMFORGE_QUIET")
    os.environ["LMFORGE_QUIET"] = "1"  # the probe's own log lines would only be noise
    try:
        with tempfile.TemporaryDirectory(prefix="lmforge-probe-") as tmp:
            speed, overhead = probe_speed(run(PROBE_STEPS, Path(tmp) / "run").metrics)
    finally:
        if quiet is None:
            del os.environ["LMFORGE_QUIET"]
        else:
            os.environ["LMFORGE_QUIET"] = quiet
    steps = fit_steps(cfg.minutes * 60, speed, overhead, cfg.batch_size * cfg.seq_len)
    steps = min(cfg.max_steps, max(PROBE_STEPS, steps))
    warmup = f" after {overhead:.0f} s of compilation and warm-up" if overhead >= 1 else ""
    console.print(f"{speed:,.0f} tokens/s here: {steps} steps fit in about {cfg.minutes:g} minutes{warmup} "
                  f"(--steps N to choose)", highlight=False)
    return steps


def _order_name(order: int) -> str:
    return {1: "unigram", 2: "bigram", 3: "trigram"}.get(order, f"{order}-gram")


def _comparison(val: dict[str, float], baselines: list[dict[str, Any]]) -> Table:
    """Validation perplexity and bits per byte of the Transformer and each baseline, with the verdict."""
    table = Table(title="validation split (Transformer: its last evaluation, over windows of the val tokens; "
                        "n-grams: every val token)", title_justify="left")
    for col in ("model", "perplexity", "bits/byte", "Transformer's perplexity is"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("Transformer", f"{val['val_ppl']:.1f}", f"{val['val_bpb']:.3f}", "")
    for i, b in enumerate(baselines):
        ratio = b["ppl"] / val["val_ppl"]
        # The first baseline is the bar the run must clear; the others are there for perspective.
        style = ("green" if ratio >= 1.2 else "red") if i == 0 else ("green" if ratio >= 1.0 else "yellow")
        table.add_row(f"{_order_name(b['order'])} (Kneser-Ney)", f"{b['ppl']:.1f}", f"{b['bpb']:.3f}",
                      f"[{style}]{ratio:.2f}x lower[/{style}]" if ratio >= 1 else
                      f"[{style}]{1 / ratio:.2f}x higher[/{style}]")
    return table


def _verdict(val: dict[str, float], baselines: list[dict[str, Any]]) -> str | None:
    """One line under the table: whether the Transformer clearly beats the first baseline, and which of the
    others it beats in bits per byte."""
    if not baselines:
        return None
    first = baselines[0]
    if first["ppl"] / val["val_ppl"] < 1.2:
        return (f"[red]the Transformer does not clearly beat the {_order_name(first['order'])} baseline: train "
                f"longer (--minutes) or check the data[/red]")
    behind = [b for b in baselines[1:] if b["bpb"] < val["val_bpb"]]
    if behind:
        beaten = " and ".join(_order_name(b["order"]) for b in baselines if b not in behind)
        names = " and ".join(_order_name(b["order"]) for b in behind)
        ahead = "models are" if len(behind) > 1 else "model is"
        return (f"the Transformer beats the {beaten} in bits/byte; the {names} {ahead} still ahead after this "
                f"short run: train longer (--minutes, or on a GPU) to close the gap")
    names = ", ".join(_order_name(b["order"]) for b in baselines)
    return f"[green]the Transformer beats every n-gram baseline here ({names}) in bits/byte[/green]"


def _write_summary(r: QuickstartResult, cfg: QuickstartConfig) -> None:
    from lmforge.atomic import write_json

    write_json(r.out / "summary.json", {
        "seconds": r.seconds, "data": str(r.data), "run": str(r.run), "model": str(r.model),
        "transformer": r.val, "baselines": r.baselines, "samples": r.samples,
        "plot": str(r.plot) if r.plot else None,
        "config": {k: getattr(cfg, k) for k in ("preset", "recipe", "batch_size", "seq_len", "vocab_size", "lr")}
        | {"steps": r.steps},
    })


def next_steps(r: QuickstartResult) -> list[str]:
    """The closing lines: where everything is, and what to try next."""
    minutes, seconds = divmod(int(r.seconds), 60)
    lines = [
        f"quickstart finished in {minutes}m{seconds:02d}s",
        f"  data:        {r.data}  (tokenizer.json, shards, report.json)",
        f"  model:       {r.model}  (model.safetensors, config.json, tokenizer)",
        f"  run:         {r.run}  (metrics.jsonl, tensorboard/, config.yaml)",
    ]
    if r.plot is not None:
        lines.append(f"  loss curve:  {r.plot}")
    lines.append(f"  summary:     {r.out / 'summary.json'}")
    commands = [
        (f'lmforge generate --checkpoint {r.run} "The list" --temperature 0.7', "sample more"),
        (f"lmforge train --data {r.data} --out runs/small --preset small --steps 3000", "bigger, longer"),
        ("lmforge prepare path/to/your/texts --out runs/mydata", "your own corpus"),
        (f"lmforge eval --compare --data {r.data} --checkpoint {r.run}", "n-gram vs LSTM vs Transformer"),
        (f"lmforge export {r.run} --out runs/hf", "Hugging Face format"),
    ]
    width = max(len(c) for c, _ in commands)
    lines += ["next:"] + [f"  {c:<{width}}  # {why}" for c, why in commands]
    return lines


__all__ = ["COMPILE_PAYS_S", "QuickstartConfig", "QuickstartResult", "fit_steps", "next_steps", "probe_speed",
           "quickstart"]
