"""llama.cpp against lmforge on the same weights: tokenization and greedy tokens of a GGUF export.

Needs `llama-cpp-python` (compiles llama.cpp from source, ~10 minutes on 2 cores; not a test dependency):

    pip install llama-cpp-python
    lmforge export runs/train --format gguf --gguf-type f32 --out model-f32.gguf
    PYTHONPATH=src python benchmarks/gguf_llamacpp.py runs/train model-f32.gguf
"""

from __future__ import annotations

import argparse

from llama_cpp import Llama

from lmforge.checkpoints import load_model, resolve_checkpoint
from lmforge.data.tokenizer import load_tokenizer, special_token_ids
from lmforge.infer.generate import GenerationConfig, generate_ids

TEXTS = ("The list of the", "A module is a file containing Python definitions", "def __init__(self, x):\n    return")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("gguf", nargs="+")
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    ckpt = resolve_checkpoint(args.checkpoint)
    model, cfg = load_model(ckpt)
    tok = load_tokenizer(ckpt)
    eos = special_token_ids(tok)["eos"]
    for path in args.gguf:
        llm = Llama(model_path=path, n_ctx=cfg.max_seq_len, n_threads=2, verbose=False)
        same_tokens = agree = total = 0
        for text in TEXTS:
            ours = tok.encode(text).ids
            same_tokens += ours == llm.tokenize(text.encode(), add_bos=False, special=False)
            prompt = [eos, *ours]  # <eos> text: how lmforge frames a text for a decoder
            ref = generate_ids(model, [prompt], GenerationConfig(temperature=0.0, max_new_tokens=args.new_tokens))[0]
            out: list[int] = []
            for t in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0, reset=True):
                out.append(t)
                if len(out) == len(ref):
                    break
            agree += sum(a == b for a, b in zip(ref, out))
            total += len(ref)
        print(f"{path}: tokenization equal on {same_tokens}/{len(TEXTS)} texts, greedy tokens equal {agree}/{total}")


if __name__ == "__main__":
    main()
