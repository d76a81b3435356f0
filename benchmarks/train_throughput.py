"""Training throughput: lmforge's decoder against Hugging Face `transformers` in the same run, same shapes.

Both models are trained by the same harness (same batches, bf16 autocast on CUDA, fused AdamW, the same float32
next-token cross-entropy, `torch.compile` on CUDA), so the ratio is the models' own speed. lmforge's decoder
computes that loss as its trainer does, `model(x, targets=y)`: from a vocabulary of 2,048 the chunked head loss
that never materialises the logits (`lmforge.models.lm_loss`; `--head-loss plain` for logits + `F.cross_entropy`);
the peers compute logits, then the loss. On CUDA the script also measures the bf16
matmul peak of this GPU and reports MFU against it (FLOPs per token: 6N + 12 L d T, PaLM appendix B).

    PYTHONPATH=src python3 benchmarks/train_throughput.py             # GPU: GPT-2 124M shape; CPU: tiny preset
    PYTHONPATH=src python3 benchmarks/train_throughput.py --device cpu --steps 20
    PYTHONPATH=src python3 benchmarks/train_throughput.py --device cpu --suites gpt --n-layer 6 --d-model 384 --vocab 65
    PYTHONPATH=src python3 benchmarks/train_throughput.py --suites lora   # LoRA r=8 vs peft on GPT-2

The `lora` suite adapts the attention projections with rank-8 LoRA on both sides: lmforge's q, k, v parts of its
fused projection and the output projection (`lmforge.finetune.lora`), against `peft` on `transformers`' GPT-2 with
the same function class (c_attn at rank 3 x 8 = the three parts' adapters stacked, attn.c_proj at rank 8, alpha
scaled alike), and full fine-tuning of each model beside them for the memory comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lmforge.models import DecoderLM, EncoderModel, get_preset
from lmforge.models.config import ModelConfig
from lmforge.models.lm_loss import CHUNKED_FROM_VOCAB


def matmul_peak_tflops(device: torch.device, n: int = 8192, iters: int = 20) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t) / 1e12


def hf_gpt2(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    hf = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                    n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                    layer_norm_epsilon=cfg.norm_eps)
    hf._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf)
    model.config.use_cache = False
    return model


def hf_bert(cfg: ModelConfig) -> torch.nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    hf = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
                    num_attention_heads=cfg.n_head, intermediate_size=cfg.d_ff, max_position_embeddings=cfg.max_seq_len,
                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=cfg.norm_eps)
    hf._attn_implementation = "sdpa"
    return BertForMaskedLM(hf)


def measure(name: str, model: torch.nn.Module, logits_of: Callable, cfg: ModelConfig, device: torch.device,
            batch: int, seq: int, steps: int, warmup: int, compile: bool, loss_given: bool = False) -> dict:
    """Tokens/s of training `model`; `logits_of(model, x)` gives logits, or with `loss_given`
    `logits_of(model, x, y)` gives (summed loss, count) itself."""
    model = model.to(device).train()
    cuda = device.type == "cuda"
    trainable = [p for p in model.parameters() if p.requires_grad]  # all of them, but under LoRA
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=3e-4, betas=(0.9, 0.95), fused=cuda)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            if loss_given:
                loss_sum, count = logits_of(model, x, y)
                return loss_sum / count
            logits = logits_of(model, x)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))

    step_loss = torch.compile(loss_fn) if compile else loss_fn
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg.vocab_size, (steps + warmup, batch, seq + 1), generator=g)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = None
    for i in range(steps + warmup):
        if i == warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        xy = data[i].to(device, non_blocking=True)
        loss = step_loss(xy[:, :-1], xy[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"name": name, "tokens_per_s": steps * batch * seq / dt, "step_ms": 1000 * dt / steps,
            "loss": loss.item(), "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None}


RANK, ALPHA = 8, 16.0


def lmforge_lora(cfg: ModelConfig) -> torch.nn.Module:
    from lmforge.finetune.lora import apply_lora

    model = DecoderLM(cfg)
    apply_lora(model, ["q", "k", "v", "attn.wo"], rank=RANK, alpha=ALPHA)
    return model


def peft_gpt2(cfg: ModelConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["attn.c_attn", "attn.c_proj"],
                      rank_pattern={"attn.c_attn": 3 * RANK}, alpha_pattern={"attn.c_attn": 3 * ALPHA},
                      fan_in_fan_out=True, lora_dropout=0.0, bias="none")
    return get_peft_model(hf_gpt2(cfg), lora)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--suites", nargs="+", default=["gpt", "bert"], choices=["gpt", "bert", "lora"])
    ap.add_argument("--preset", default=None, help="default: gpt2-124m / bert-base on CUDA, tiny / bert-tiny on CPU")
    ap.add_argument("--n-layer", type=int, default=None, help="override the preset's layers")
    ap.add_argument("--d-model", type=int, default=None, help="override the preset's width (heads of 64)")
    ap.add_argument("--vocab", type=int, default=None, help="override the preset's vocabulary")
    ap.add_argument("--head-loss", choices=["model", "plain"], default="model",
                    help="lmforge's loss: its own (the trainer's; chunked from vocab 2,048) or logits + cross-entropy")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--compile", action="store_true", help="torch.compile on the CPU too (on by default on CUDA)")
    ap.add_argument("--json", default=None, help="also write results here (default: $OUT/train_throughput.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    suites = {  # name -> (lmforge preset on CUDA / CPU, lmforge model + logits, HF model + logits)
        "gpt": (("gpt2-124m", "tiny"), lambda c: (DecoderLM(c), lambda m, x: m(x)),
                lambda c: (hf_gpt2(c), lambda m, x: m(input_ids=x).logits), "GPT2LMHeadModel"),
        "bert": (("bert-base", "bert-tiny"), lambda c: (EncoderModel(c), lambda m, x: m.mlm_logits(m(x))),
                 lambda c: (hf_bert(c), lambda m, x: m(input_ids=x).logits), "BertForMaskedLM"),
        "lora": (("gpt2-124m", "tiny"), lambda c: (lmforge_lora(c), lambda m, x: m(x)),
                 lambda c: (peft_gpt2(c), lambda m, x: m(input_ids=x).logits), "GPT2LMHeadModel + peft LoRA"),
    }
    results = {}
    peak = matmul_peak_tflops(device) if cuda else None
    name = torch.cuda.get_device_name(device) if cuda else "CPU"
    if peak:
        print(f"measured bf16 matmul peak on {name}: {peak:.0f} TFLOP/s")
    for suite in args.suites:
        presets, ours, theirs, hf_name = suites[suite]
        preset = args.preset or presets[0 if cuda else 1]
        cfg = get_preset(preset)
        cfg.dropout = 0.0
        cfg.n_layer = args.n_layer or cfg.n_layer
        cfg.vocab_size = args.vocab or cfg.vocab_size
        if args.d_model:
            cfg.d_model, cfg.n_head, cfg.n_kv_head = args.d_model, args.d_model // 64, args.d_model // 64
            cfg.d_ff = 4 * args.d_model
        batch = args.batch or (16 if cuda else 8)
        seq = args.seq or min(cfg.max_seq_len, 1024 if cuda else 256)
        steps = args.steps or (30 if cuda else 10)
        warmup = args.warmup or (10 if cuda else 3)
        compile = (cuda or args.compile) and not args.no_compile
        torch.manual_seed(0)
        chunked = suite == "gpt" and args.head_loss == "model"
        lmforge_side = (DecoderLM(cfg), lambda m, x, y: m(x, targets=y)) if chunked else ours(cfg)
        via = f" (own loss{', chunked' if cfg.vocab_size >= CHUNKED_FROM_VOCAB else ''})" if chunked else ""
        rows = [measure("lmforge" + (" LoRA r=8" if suite == "lora" else "") + via,
                        *lmforge_side, cfg, device, batch, seq, steps, warmup, compile, loss_given=chunked),
                measure(f"hf-transformers {hf_name} (sdpa)", *theirs(cfg), cfg, device, batch, seq, steps, warmup,
                        compile)]
        if suite == "lora":  # full fine-tuning of each, for the memory (and speed) LoRA saves
            rows += [measure("lmforge full fine-tuning", DecoderLM(cfg), lambda m, x: m(x), cfg, device, batch, seq,
                             steps, warmup, compile),
                     measure("hf-transformers GPT2LMHeadModel full", hf_gpt2(cfg),
                             lambda m, x: m(input_ids=x).logits, cfg, device, batch, seq, steps, warmup, compile)]
        flops_tok = cfg.flops_per_token(seq)
        print(f"\n{suite}: training throughput — {name}, preset {preset}, batch {batch} x seq {seq}, "
              f"{'bf16 autocast' if cuda else 'fp32'}{', compiled' if compile else ', eager'}, {steps} timed steps")
        print(f"{'model':44s} {'tokens/s':>12s} {'step ms':>9s} {'MFU':>7s} {'peak GB':>8s} {'vs HF':>7s}")
        for r in rows:
            r["mfu"] = flops_tok * r["tokens_per_s"] / (peak * 1e12) if peak else None
            r["ratio_vs_hf"] = r["tokens_per_s"] / rows[1]["tokens_per_s"]
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "-"
            mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] else "-"
            print(f"{r['name']:44s} {r['tokens_per_s']:12,.0f} {r['step_ms']:9.1f} {mfu:>7s} {mem:>8s} "
                  f"{r['ratio_vs_hf']:6.2f}x")
        results[suite] = {"preset": preset, "batch": batch, "seq": seq, "rows": rows}
    out = args.json or (os.path.join(os.environ["OUT"], "train_throughput.json") if os.environ.get("OUT") else None)
    if out:
        with open(out, "w") as f:
            json.dump({"device": name, "peak_tflops": peak, "suites": results}, f, indent=2)


if __name__ == "__main__":
    main()
