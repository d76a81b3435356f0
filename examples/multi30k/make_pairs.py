"""Multi30k en->de as lmforge pairs files (TSV, columns source / target) plus the copy-source baseline's BLEU.

    python examples/multi30k/make_pairs.py ../shared/data/multi30k --out runs/multi30k

Writes OUT/train.tsv, OUT/val.tsv (the validation set: for choosing a recipe, never the test set),
OUT/test_2016.tsv (the flickr test set), OUT/train_text.txt (both sides of the training
pairs, one sentence per line, for the tokenizer) and OUT/baselines.json (copy-source: the English source given as
the German translation, scored with sacrebleu on the test set, as lmforge eval scores a model).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path


def lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [" ".join(line.split()) for line in f]


def write_pairs(path: Path, sources: list[str], targets: list[str]) -> int:
    rows = [(s, t) for s, t in zip(sources, targets, strict=True) if s and t and "\t" not in s + t]
    path.write_text("source\ttarget\n" + "".join(f"{s}\t{t}\n" for s, t in rows), encoding="utf-8")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="the multi30k directory (train.en.gz, train.de.gz, test_2016_flickr.*)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from lmforge.eval.metrics import bleu, chrf

    args.out.mkdir(parents=True, exist_ok=True)
    en, de = lines(args.data / "train.en.gz"), lines(args.data / "train.de.gz")
    n_train = write_pairs(args.out / "train.tsv", en, de)
    (args.out / "train_text.txt").write_text("\n\n".join(en + de) + "\n", encoding="utf-8")
    n_val = write_pairs(args.out / "val.tsv", lines(args.data / "val.en.gz"), lines(args.data / "val.de.gz"))
    test_en, test_de = lines(args.data / "test_2016_flickr.en.gz"), lines(args.data / "test_2016_flickr.de.gz")
    n_test = write_pairs(args.out / "test_2016.tsv", test_en, test_de)
    copy_bleu, copy_chrf = bleu(test_en, test_de), chrf(test_en, test_de)
    results = {"train_pairs": n_train, "val_pairs": n_val, "test_pairs": n_test,
               "copy_source": {"bleu": copy_bleu.score, "chrf": copy_chrf.score, "signature": copy_bleu.signature}}
    (args.out / "baselines.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
