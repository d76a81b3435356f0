"""Chat fine-tuning end to end on text every install has, with its figure.

    python examples/chat_sft/run.py --out runs/chat_example           # about 10 minutes on 2 CPU cores

1. builds the instruction set (`build_chats.py`: "What does MODULE.NAME do?" + the docstring past its first
   sentence as context; the answer is the first sentence),
2. prepares the built-in corpus (`builtin:python-docs`) and pretrains a `tiny` GPT on it (`causal_lm`),
3. chat-tunes it (`chat_sft --init-from`, the chat tokens added to its vocabulary, packing on),
4. answers the held-out conversations (the objective's own held-out tenth) greedily through the chat template,
   stopping at `<|end|>`, and scores the answers by exact match and ROUGE-L against the reference first
   sentences, beside a copy-the-context baseline (the first sentence of the context the question gives).

Everything goes through lmforge's verbs and library functions; results.json holds the figures and samples.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from build_chats import conversations

from lmforge.checkpoints import load_checkpoint_tokenizer, load_model, resolve_checkpoint
from lmforge.cli.main import main as lmforge
from lmforge.data.chat import END_OF_TURN, load_chat_template, render_chat
from lmforge.data.examples import held_out
from lmforge.eval.metrics import rouge
from lmforge.eval.squad import exact_match
from lmforge.infer.generate import GenerationConfig, generate_ids

VAL_FRACTION = 0.1  # chat_sft's default chats_val_fraction: the same held-out conversations


def first_sentence(text: str) -> str:
    m = re.match(r"^(.+?[.!?])(?:\s|$)", text.strip(), re.S)
    return " ".join((m.group(1) if m else text).split())


def answer_all(checkpoint: Path, chats: list[dict], batch: int = 16) -> list[str]:
    model, cfg = load_model(checkpoint)
    tok = load_checkpoint_tokenizer(checkpoint, cfg)
    template = load_chat_template(checkpoint)
    end = tok.token_to_id(END_OF_TURN)
    answers = []
    gen = GenerationConfig(max_new_tokens=48, temperature=0.0)
    for i in range(0, len(chats), batch):
        prompts = [tok.encode(render_chat(template, c["messages"][:-1], add_generation_prompt=True),
                              add_special_tokens=False).ids for c in chats[i:i + batch]]
        answers += [tok.decode(ids).strip() for ids in generate_ids(model, prompts, gen, eos_id=end)]
    return answers


def scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    return {"exact_match": sum(map(exact_match, predictions, references)) / len(references),
            "rouge_l": rouge(predictions, references)["rouge_l"]}


def run(out: Path, pretrain_steps: int, sft_steps: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    chats = conversations()
    chats_file = out / "chats.jsonl"
    chats_file.write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    common = ["--device", "cpu", "--no-tensorboard", "--keep-last", "1"]
    if not (out / "data" / "manifest.json").is_file():
        assert lmforge(["prepare", "builtin:python-docs", "--out", str(out / "data"),
                        "--tokenizer.vocab-size", "4096"]) == 0
    assert lmforge(["train", "--data", str(out / "data"), "--out", str(out / "base"), "--preset", "tiny",
                    "--steps", str(pretrain_steps), "--batch-size", "16", "--seq-len", "128", "--optim.lr", "1e-3",
                    "--eval-every", str(pretrain_steps), "--eval-batches", "20", "--checkpoint-every",
                    str(pretrain_steps), "--log-every", "50", *common]) == 0
    assert lmforge(["train", "--data", str(out / "data"), "--out", str(out / "chat"), "--init-from",
                    str(out / "base"), "--objective", "chat_sft", "--objective-options.chats", str(chats_file),
                    "--steps", str(sft_steps), "--batch-size", "16", "--seq-len", "256", "--optim.lr", "1e-3",
                    "--eval-every", str(max(sft_steps // 4, 1)), "--eval-batches", "0", "--checkpoint-every",
                    str(sft_steps), "--log-every", "25", *common]) == 0
    val = [c for c, h in zip(chats, held_out(len(chats), VAL_FRACTION)) if h]
    references = [c["messages"][-1]["content"] for c in val]
    baseline = [first_sentence(c["messages"][1]["content"].split("\n\n", 1)[1]) for c in val]
    predictions = answer_all(resolve_checkpoint(out / "chat"), val)
    result = {
        "conversations": len(chats), "held_out": len(val), "pretrain_steps": pretrain_steps, "sft_steps": sft_steps,
        "model": scores(predictions, references), "copy_context_baseline": scores(baseline, references),
        "minutes": round((time.perf_counter() - t0) / 60, 1),
        "samples": [{"messages": c["messages"][:-1], "reference": r, "model": p}
                    for c, r, p in list(zip(val, references, predictions))[:8]],
    }
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/chat_example"))
    parser.add_argument("--pretrain-steps", type=int, default=1200)
    parser.add_argument("--sft-steps", type=int, default=600)
    args = parser.parse_args()
    r = run(args.out, args.pretrain_steps, args.sft_steps)
    print(f"held-out answers ({r['held_out']} of {r['conversations']} conversations):")
    for name in ("model", "copy_context_baseline"):
        print(f"  {name:22s} exact match {r[name]['exact_match']:.3f}   ROUGE-L {r[name]['rouge_l']:.3f}")
    s = r["samples"][0]
    print(f"sample: {s['messages'][1]['content'].splitlines()[0]}\n  reference: {s['reference']}\n"
          f"  model:     {s['model']}")


if __name__ == "__main__":
    main()
