"""Where one seq2seq (T5) training step's CPU time goes, on real text pairs, one thread, process CPU time.

    PYTHONPATH=src python benchmarks/seq2seq_step_cpu.py runs/mt/data4000 runs/mt/pairs/train.tsv \
        --d-model 256 --layers 3 --d-ff 768 --batch 128

Times, per step: the batch (tokenised pairs padded to the batch's longest), the encoder and decoder forwards, the
head (logits over the vocabulary) with the loss, the backward pass and the AdamW step; then the whole step as the
trainer's seq2seq objective computes it (`Seq2Seq.forward`: loss, label smoothing, the logged sums).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.data.examples import pad, read_pairs
from lmforge.data.loaders import TokenDataset
from lmforge.data.tokenizer import decoder_start_id, load_tokenizer
from lmforge.eval.metrics import IGNORE_INDEX
from lmforge.models import build_model, get_preset


def encoded_pairs(data: str, pairs: str) -> tuple[list[list[int]], list[list[int]], dict[str, int], int]:
    ds = TokenDataset.open(data, "train")
    tok = load_tokenizer(ds.tokenizer_path)
    rows = read_pairs(Path(pairs), "source", "target")
    eos = ds.special_ids["eos"]
    src = [e.ids[:47] + [eos] for e in tok.encode_batch([s for s, _ in rows], add_special_tokens=False)]
    tgt = [e.ids[:47] + [eos] for e in tok.encode_batch([t for _, t in rows], add_special_tokens=False)]
    return src, tgt, ds.special_ids, ds.vocab_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("pairs")
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--d-ff", type=int, default=768)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    src, tgt, special, vocab = encoded_pairs(args.data, args.pairs)
    cfg = get_preset("t5-tiny")
    for k, v in dict(vocab_size=vocab, d_model=args.d_model, n_head=args.heads, n_layer=args.layers,
                     n_decoder_layer=args.layers, d_ff=args.d_ff, dropout=args.dropout, max_seq_len=64).items():
        setattr(cfg, k, v)
    cfg.head_dim = args.d_model // args.heads
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start, pad_id = decoder_start_id(special), special.get("pad", 0)
    rng = random.Random(0)
    parts = dict.fromkeys(("batch", "encoder", "decoder", "head+loss", "backward", "optimizer"), 0.0)
    tokens = 0

    def step(record: bool) -> None:
        nonlocal tokens
        marks = [time.process_time()]
        idx = rng.sample(range(len(src)), args.batch)
        s, s_mask = pad([src[i] for i in idx], pad_id)
        t_in, _ = pad([[start, *tgt[i][:-1]] for i in idx], pad_id)
        labels, _ = pad([tgt[i] for i in idx], pad_id, value=IGNORE_INDEX)
        marks.append(time.process_time())
        memory = model.encode(s, s_mask)
        marks.append(time.process_time())
        ctx_mask = s_mask.bool()[:, None, None, :]
        x, rope = model.embed(t_in, torch.arange(t_in.shape[1])[None])
        h = model.decoder(x, rope=rope, context=memory, context_mask=ctx_mask) * cfg.d_model**-0.5
        marks.append(time.process_time())
        logits = model.lm_head(h)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                               label_smoothing=0.1)
        marks.append(time.process_time())
        loss.backward()
        marks.append(time.process_time())
        opt.step()
        opt.zero_grad(set_to_none=True)
        marks.append(time.process_time())
        if record:
            for name, a, b in zip(parts, marks, marks[1:]):
                parts[name] += b - a
            tokens += int(s_mask.sum()) + int((labels != IGNORE_INDEX).sum())

    for _ in range(2):
        step(False)
    for _ in range(args.steps):
        step(True)
    total = sum(parts.values())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"T5 {args.layers}+{args.layers} x {args.d_model} (ff {args.d_ff}), vocab {vocab}, {n_params / 1e6:.2f} M "
          f"params, {args.batch} pairs ({tokens / args.steps:.0f} real tokens) a step: "
          f"{total / args.steps * 1000:.0f} ms CPU per step")
    for name, t in parts.items():
        print(f"  {name:10s} {t / args.steps * 1000:7.1f} ms  {100 * t / total:5.1f} %")


if __name__ == "__main__":
    main()
