"""Memory and speed of FSDP2 with activation checkpointing (and CPU offload) on one rank, as `lmforge train` sets
them up (`lmforge.train.runtime.parallelize`: per-block checkpointing, then FSDP2 with bf16 compute on CUDA).

Two tables:
1. The GPT-2 124M shape (B8 x T1024) under FSDP2 with activation checkpointing off and on: tokens/s and peak
   memory.
2. The largest model of a GPT-2-style ladder (124M, 350M, 774M, 1.5B, 2.7B, 6.7B, 13B: n_layer x d_model) that
   trains one step within the memory budget (default: the GPU's memory) with FSDP2 alone, + activation
   checkpointing, + CPU offload of parameters, gradients and optimizer state.

Each measurement runs in a fresh process (a one-member process group, so no torchrun is needed), so that peak
memory is that configuration's own and an out-of-memory failure ends only that trial. On CUDA, peak memory is
`torch.cuda.max_memory_allocated`; on the CPU (tiny shapes, to check that the script works) the process's peak
resident set, which includes ~0.3-0.5 GB of Python and torch, so only differences between rows mean anything.

    PYTHONPATH=src python3 benchmarks/dist_memory.py                 # GPU: the shapes above
    PYTHONPATH=src python3 benchmarks/dist_memory.py --device cpu    # tiny shapes, a ladder of tiny widths
    PYTHONPATH=src python3 benchmarks/dist_memory.py --budget-gb 40 --batch 8 --seq 1024
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

# (name, n_layer, d_model, n_head): GPT-2's sizes, then GPT-3-style widths at 32-40 layers.
LADDER = [("124M", 12, 768, 12), ("350M", 24, 1024, 16), ("774M", 36, 1280, 20), ("1.5B", 48, 1600, 25),
          ("2.7B", 32, 2560, 32), ("6.7B", 32, 4096, 32), ("13B", 40, 5120, 40)]
TINY_LADDER = [("w32", 2, 32, 2), ("w64", 2, 64, 4), ("w128", 4, 128, 4), ("w256", 4, 256, 4), ("w512", 6, 512, 8),
               ("w768", 8, 768, 12)]
MODES = {"fsdp": {}, "fsdp+ac": {"ac": True}, "fsdp+ac+offload": {"ac": True, "offload": True}}


# --- one measurement, in its own process --------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial(spec: dict) -> dict:
    """Train `spec["steps"]` steps of random tokens; tokens/s over the steps after the first, and peak memory."""
    import torch
    import torch.nn.functional as F

    from lmforge import parallel as lparallel
    from lmforge.models import build_model, get_preset
    from lmforge.models.config import ModelConfig
    from lmforge.parallel.parallelize import ParallelConfig
    from lmforge.train.config import OptimConfig
    from lmforge.train.optim import build_optimizer
    from lmforge.train.runtime import parallelize, setup_runtime, teardown

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(k, v)  # a one-member process group, as `torchrun --nproc_per_node 1` would make
    pcfg = ParallelConfig(strategy="fsdp", activation_checkpointing=spec.get("ac", False),
                          fsdp_cpu_offload=spec.get("offload", False))
    rt = setup_runtime(spec["device"], "auto", compile=spec["compile"], parallel=pcfg)
    cuda = rt.device.type == "cuda"
    try:
        torch.manual_seed(0)  # the same weights and tokens in every trial of a shape
        # GPT-2's architecture at this size; the fields the preset derived from its width are derived again.
        shape = {k: spec[k] for k in ("n_layer", "d_model", "n_head")}
        derived = dict.fromkeys(("n_kv_head", "head_dim", "d_ff", "n_decoder_layer"))
        cfg = ModelConfig(**{**get_preset("gpt2-124m").to_dict(), **derived, **shape, "dropout": 0.0,
                             "max_seq_len": spec["seq"], "vocab_size": spec["vocab"]})
        model = build_model(cfg)
        params = sum(p.numel() for p in model.parameters())
        step_model = parallelize(model, rt, pcfg)  # what `lmforge train` does
        opt = build_optimizer(model, OptimConfig(lr=1e-4), rt.device)
        data = torch.randint(0, cfg.vocab_size, (spec["batch"], spec["seq"] + 1))
        if cuda:
            torch.cuda.reset_peak_memory_stats(rt.device)
        t0 = time.perf_counter()
        for i in range(spec["steps"]):
            if i == 1:  # the first step allocates the optimizer state (and compiles): not timed
                rt.synchronize()
                t0 = time.perf_counter()
            xy = data.to(rt.device)
            with rt.autocast():
                logits = step_model(xy[:, :-1])
            loss = F.cross_entropy(logits.flatten(0, 1).float(), xy[:, 1:].flatten())
            loss.backward()
            lparallel.clip_grad_norm_(model, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        rt.synchronize()
        dt = time.perf_counter() - t0
        timed = max(spec["steps"] - 1, 1)
        peak = (torch.cuda.max_memory_allocated(rt.device) if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        return {"ok": True, "params": params, "tokens_per_s": timed * spec["batch"] * spec["seq"] / dt,
                "peak_gb": peak / 2**30, "loss": float(loss)}
    except torch.OutOfMemoryError:
        return {"ok": False, "oom": True}
    finally:
        teardown(rt, clean=False)


def run_trial(spec: dict, timeout: float) -> dict:
    """`trial(spec)` in a child process; a killed or failed child (out of host memory) counts as not fitting."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(os.path.dirname(__file__), "..",
                                                                                   "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    try:
        proc = subprocess.run([sys.executable, __file__, "--trial", json.dumps(spec)], env=env, text=True,
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:.0f}s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"ok": False, "error": f"exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


# --- the tables ------------------------------------------------------------------------------------------------

def fits(result: dict, budget_gb: float) -> bool:
    return result.get("ok", False) and result["peak_gb"] <= budget_gb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--batch", type=int, default=None, help="sequences per step (default: 8 on CUDA, 4 on CPU)")
    ap.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: 1024 on CUDA, 64 on CPU)")
    ap.add_argument("--steps", type=int, default=None, help="steps per trial, the first untimed (default: 6 / 4)")
    ap.add_argument("--budget-gb", type=float, default=None,
                    help="a model fits when its peak memory is at most this (default: the GPU's memory; on the CPU "
                         "0.55 GB of resident memory, a scale at which the tiny ladder stops somewhere)")
    ap.add_argument("--compile", action="store_true", help="torch.compile each block (slower to start)")
    ap.add_argument("--skip-search", action="store_true", help="only the first table")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="stop starting trials after this many seconds, reporting what was measured (for a leased "
                         "machine's per-command limit)")
    ap.add_argument("--json", default=None, help="also write the results here (default: $OUT/dist_memory.json)")
    ap.add_argument("--trial", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trial:
        print(json.dumps(trial(json.loads(args.trial))), flush=True)
        return

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device == "cuda"
    name = torch.cuda.get_device_name(0) if cuda else "CPU"
    budget = args.budget_gb or (torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else 0.55)
    base = {"device": device, "batch": args.batch or (8 if cuda else 4), "seq": args.seq or (1024 if cuda else 64),
            "steps": args.steps or (6 if cuda else 4), "vocab": 50304 if cuda else 512, "compile": args.compile}
    timeout = 240.0 if cuda else 300.0
    t_start = time.monotonic()
    # CPU offload keeps fp32 parameters, gradients and both AdamW moments (16 bytes a parameter) in host memory:
    # a model past ~60% of the host's RAM is not tried (the kernel's OOM killer may take more than the trial).
    host_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def too_late() -> bool:
        return args.deadline_s is not None and time.monotonic() - t_start > args.deadline_s
    ladder = LADDER if cuda else TINY_LADDER
    shape = ladder[0] if cuda else ladder[2]
    results: dict = {"device": name, "budget_gb": budget, **base, "throughput": [], "largest": {}}

    print(f"{name}: FSDP2 on 1 rank, batch {base['batch']} x seq {base['seq']}, "
          f"{'bf16' if cuda else 'fp32'}{', compiled' if args.compile else ''}; peak memory = "
          f"{'max_memory_allocated' if cuda else 'peak RSS of the process'}")
    print(f"\n1. {shape[0]} shape (n_layer {shape[1]}, d_model {shape[2]})")
    print("| mode | tokens/s | peak GiB |\n|---|---:|---:|")
    for mode in ("fsdp", "fsdp+ac"):
        r = run_trial({**base, **MODES[mode], "n_layer": shape[1], "d_model": shape[2], "n_head": shape[3]}, timeout)
        results["throughput"].append({"mode": mode, **r})
        if r.get("ok"):
            print(f"| {mode} | {r['tokens_per_s']:,.0f} | {r['peak_gb']:.2f} |", flush=True)
        else:
            print(f"| {mode} | failed: {r.get('error', 'out of memory')} | |", flush=True)

    if not args.skip_search:
        print(f"\n2. largest model that trains within {budget:.1f} GiB")
        print("| mode | largest that fits | params | tokens/s | peak GiB | next size |\n|---|---|---:|---:|---:|---|")
        start = 0
        for mode, extra in MODES.items():
            best, nxt = None, None
            for i in range(start, len(ladder)):
                label, n_layer, d_model, n_head = ladder[i]
                if too_late():
                    nxt = f"{label}: not tried (--deadline-s reached)"
                    break
                approx_params = 12 * n_layer * d_model**2 + base["vocab"] * d_model
                if extra.get("offload") and approx_params * 16 / 2**30 > 0.6 * host_gb:
                    nxt = f"{label}: not tried (its optimizer state would not fit {host_gb:.0f} GiB of host memory)"
                    break
                r = run_trial({**base, **extra, "n_layer": n_layer, "d_model": d_model, "n_head": n_head}, timeout)
                if not fits(r, budget):
                    nxt = f"{label}: " + ("out of memory" if r.get("oom") else r.get("error") or
                                          f"{r['peak_gb']:.2f} GiB")
                    break
                best, start = (label, r), i  # the next mode saves more memory: start its search here
            results["largest"][mode] = {"fits": best[0] if best else None, **(best[1] if best else {}),
                                        "next": nxt}
            if best:
                label, r = best
                print(f"| {mode} | {label} | {r['params'] / 1e6:,.1f}M | {r['tokens_per_s']:,.0f} | "
                      f"{r['peak_gb']:.2f} | {nxt or 'ladder exhausted'} |", flush=True)
            else:
                print(f"| {mode} | none | | | | {nxt} |", flush=True)

    out = args.json or (os.path.join(os.environ["OUT"], "dist_memory.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
