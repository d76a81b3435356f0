"""Hold whole sentences of SST-2's training set out, with every phrase of them, for choosing a recipe without dev.

SST-2's training file is 67k phrases cut from about 6.9k sentences: most phrases are a few words of a longer one,
and the full sentences are the phrases no other phrase contains (the "roots"). A random 2 % of the phrases, the
classifier's own held-out split, is no test of generalisation: the sentence each comes from, and its neighbours, are
in training. This script instead draws a fraction of the roots (seeded), writes them as the held-out set, and
leaves out of the fitting set every phrase that any held-out root contains. The held-out set then looks like
dev (full sentences, median 19 words) and nothing of it is seen in pretraining or fine-tuning.

    python examples/sst2/split.py ../shared/data/sst2/train.tsv --out runs/sst2-split   # fit.tsv, heldout.tsv
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path


def read_tsv(path: Path) -> list[tuple[str, str]]:
    """(label, sentence) rows of an SST-2 TSV with a header row."""
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [(label, text.strip()) for label, text in (line.split("\t", 1) for line in lines if line)]


def roots(phrases: list[str]) -> list[str]:
    """The phrases that no other phrase contains (as whole words), longest first."""
    found: list[str] = []
    by_word: dict[str, list[int]] = defaultdict(list)  # word -> roots containing it
    for phrase in sorted(set(phrases), key=lambda s: (-len(s.split()), s)):  # deterministic order
        words = phrase.split()
        rarest = min(words, key=lambda w: len(by_word[w]))
        if any(f" {phrase} " in f" {found[r]} " for r in by_word[rarest]):
            continue
        for w in set(words):
            by_word[w].append(len(found))
        found.append(phrase)
    return found


def contained_in(phrase: str, sentences: set[str], by_word: dict[str, list[str]]) -> bool:
    words = phrase.split()
    rarest = min(words, key=lambda w: len(by_word.get(w, ())))
    return any(f" {phrase} " in f" {s} " for s in by_word.get(rarest, ()) if s in sentences)


def split(rows: list[tuple[str, str]], fraction: float, seed: int) -> tuple[list, list]:
    """(fit rows, held-out rows): held-out = a seeded `fraction` of the roots; fit = the phrases none contains."""
    all_roots = roots([text for _, text in rows])
    held = set(random.Random(seed).sample(all_roots, round(fraction * len(all_roots))))
    by_word: dict[str, list[str]] = defaultdict(list)
    for s in held:
        for w in set(s.split()):
            by_word[w].append(s)
    fit, heldout, seen = [], [], set()
    for label, text in rows:
        if text in held:
            if text not in seen:  # a duplicated sentence is scored once
                heldout.append((label, text))
                seen.add(text)
        elif not contained_in(text, held, by_word):
            fit.append((label, text))
    return fit, heldout


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("label\tsentence\n" + "".join(f"{label}\t{text}\n" for label, text in rows), encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("train", type=Path, help="SST-2 train.tsv (label, sentence)")
    p.add_argument("--out", type=Path, required=True, help="directory for fit.tsv and heldout.tsv")
    p.add_argument("--fraction", type=float, default=0.1, help="fraction of the sentences held out")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = read_tsv(args.train)
    fit, heldout = split(rows, args.fraction, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_tsv(args.out / "fit.tsv", fit)
    write_tsv(args.out / "heldout.tsv", heldout)
    summary = {"phrases": len(rows), "fit_phrases": len(fit), "heldout_sentences": len(heldout),
               "heldout_positive": sum(label == "1" for label, _ in heldout) / max(len(heldout), 1)}
    (args.out / "split.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
