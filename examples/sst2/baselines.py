"""SST-2 baselines on the dev set, measured in the same run as the lmforge model: the majority class of the
training labels, and TF-IDF (word unigrams + bigrams) with logistic regression (scikit-learn).

    python examples/sst2/baselines.py ../shared/data/sst2 --out runs/sst2/baselines.json
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from pathlib import Path


def read_tsv(path: Path, text_column: str) -> tuple[list[str], list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[text_column] for r in rows], [r["label"] for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="directory holding train.tsv and dev.tsv")
    parser.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    args = parser.parse_args()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    train_x, train_y = read_tsv(args.data / "train.tsv", "sentence")
    dev_x, dev_y = read_tsv(args.data / "dev.tsv", "content")
    majority = Counter(train_y).most_common(1)[0][0]
    results = {"majority_class": {"label": majority,
                                  "accuracy": sum(y == majority for y in dev_y) / len(dev_y)}}
    t0 = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    classifier = LogisticRegression(C=4.0, max_iter=2000)
    classifier.fit(vectorizer.fit_transform(train_x), train_y)
    predicted = classifier.predict(vectorizer.transform(dev_x))
    results["tfidf_logistic"] = {"accuracy": float((predicted == dev_y).mean()),
                                 "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
