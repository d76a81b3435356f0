"""CNN/DailyMail sample: the lead-3 baseline's ROUGE (the article's first three sentences as its summary), scored
with lmforge's ROUGE (rouge-score, Porter stemming), and the sample as an lmforge pairs file for `lmforge eval
--task summarisation` of a summariser.

    python examples/cnn_dailymail/lead3.py ../shared/data/cnn_dailymail/sample100.csv --out runs/cnndm
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", type=Path, help="CSV with columns article and highlights")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from lmforge.eval.metrics import rouge

    with open(args.csv, encoding="utf-8", newline="") as f:
        rows = [(r["article"], r["highlights"]) for r in csv.DictReader(f)]
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "pairs.jsonl", "w", encoding="utf-8") as f:
        for article, highlights in rows:
            f.write(json.dumps({"article": article, "highlights": " ".join(highlights.split())}) + "\n")
    references = [" ".join(h.split()) for _, h in rows]
    results = {"articles": len(rows), "lead_3": rouge([lead(a) for a, _ in rows], references)}
    (args.out / "baselines.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
