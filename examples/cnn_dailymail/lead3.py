"""CNN/DailyMail sample: split it into training and test articles, write them as lmforge pairs files, and score
the lead-3 baseline (the article's first three sentences as its summary) with lmforge's ROUGE (rouge-score,
Porter stemming) on the test articles, and on all of them.

    python examples/cnn_dailymail/lead3.py ../shared/data/cnn_dailymail/sample100.csv --out runs/cnndm

OUT gets train.jsonl / test.jsonl (`article`, `highlights`), pairs.jsonl (all rows), train_text.txt (the
training articles and highlights, one per line, for a tokenizer and language-model pretraining) and
baselines.json. Every --test-every-th row is a test article (the rows are in no particular order), so the split is
the same on every machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

# A sentence ends at . ! or ? followed by a space and a capital letter or a quote (CNN/DM's highlights are one
# sentence per line; articles are running text). Good enough for lead-3, which only needs the first three.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def lead(text: str, n: int = 3) -> str:
    return " ".join(SENTENCE_END.split(" ".join(text.split()))[:n])


def write_pairs(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for article, highlights in rows:
            f.write(json.dumps({"article": article, "highlights": highlights}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="CSV with columns article and highlights")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--test-every", type=int, default=5, help="every N-th row is a test article (default 5)")
    args = parser.parse_args()
    from lmforge.eval.metrics import rouge

    with open(args.csv, encoding="utf-8", newline="") as f:
        rows = [(" ".join(r["article"].split()), " ".join(r["highlights"].split())) for r in csv.DictReader(f)]
    test = [row for i, row in enumerate(rows) if i % args.test_every == args.test_every - 1]
    train = [row for i, row in enumerate(rows) if i % args.test_every != args.test_every - 1]
    args.out.mkdir(parents=True, exist_ok=True)
    write_pairs(args.out / "pairs.jsonl", rows)
    write_pairs(args.out / "train.jsonl", train)
    write_pairs(args.out / "test.jsonl", test)
    with open(args.out / "train_text.txt", "w", encoding="utf-8") as f:
        for article, highlights in train:
            f.write(f"{article}\n{highlights}\n")

    def lead_3(split: list[tuple[str, str]]) -> dict[str, float]:
        return rouge([lead(article) for article, _ in split], [highlights for _, highlights in split])

    results = {"articles": len(rows), "train_articles": len(train), "test_articles": len(test),
               "lead_3_test": lead_3(test), "lead_3_all": lead_3(rows)}
    (args.out / "baselines.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
