"""The SQuAD subsets as an lmforge QA recipe's files, and the trivial baselines measured on them.

    python examples/squad/split.py ../shared/data/squad --out runs/squad [--heldout "Victoria_(Australia)"]
        [--val "Sky_(United_Kingdom)"]

The v2.0 subset (5 Wikipedia articles, 1,407 questions, half unanswerable) is split **by article**: the held-out
article's questions are the evaluation set, so no context the model is scored on was seen in fine-tuning (a split
by question, as the objective's own `val_fraction` makes, shares paragraphs between training and evaluation). A
second article is the validation set, for choosing the checkpoint and the no-answer threshold: its contexts are
unseen too, as the scored article's are, so what is chosen on it is chosen under the conditions it is scored in.
Written into OUT:

- squad-train.json, squad-val.json, squad-heldout.json: SQuAD v2.0 files of the training articles, of the
  validation article and of the held-out one;
- pretrain.txt: the training articles' paragraphs and questions, one document per paragraph, for masked-LM
  pretraining (the validation and held-out articles' text is not in it);
- squad-v1.1-located.json: the v1.1 subset (6 textbook chapters, one long context each, answers without
  `answer_start` for most of them) with every answer's `answer_start` set to its first occurrence in the context;
  a question none of whose answers occurs is left out (counted);
- baselines.json: on the held-out v2.0 article, "no answer" for every question and "the context's first
  sentence" for every question (and "no answer" on the validation article); on v1.1, the first sentence. Scored
  with lmforge's official SQuAD EM/F1 (`lmforge.eval.squad`), as `lmforge eval --task qa` scores a model, in
  percent.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
from pathlib import Path
from typing import Any

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def questions_of(articles: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str]]:
    return [(qa, p["context"]) for a in articles for p in a["paragraphs"] for qa in p["qas"]]


def first_sentence(context: str) -> str:
    return SENTENCE_END.split(context.strip(), maxsplit=1)[0]


def scores(predicted: dict[str, str], questions: list[tuple[dict[str, Any], str]]) -> dict[str, float]:
    from lmforge.eval.squad import squad_scores

    golds = {qa["id"]: [a["text"] for a in qa["answers"]] for qa, _ in questions}
    return {k: round(100 * v, 2) if k != "questions" else v for k, v in squad_scores(predicted, golds).items()}


def locate_answers(squad: dict[str, Any]) -> tuple[dict[str, Any], int, int]:
    """The file with each answer's answer_start set to its first occurrence; (file, questions kept, left out)."""
    located = copy.deepcopy(squad)
    kept = dropped = 0
    for article in located["data"]:
        for paragraph in article["paragraphs"]:
            qas = []
            for qa in paragraph["qas"]:
                answers = [{"text": a["text"], "answer_start": paragraph["context"].find(a["text"])}
                           for a in qa["answers"]]
                answers = [a for a in answers if a["answer_start"] >= 0]
                if answers:
                    qas.append({**qa, "answers": answers})
            kept, dropped = kept + len(qas), dropped + len(paragraph["qas"]) - len(qas)
            paragraph["qas"] = qas
    return located, kept, dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="directory holding squad-v2.0-dev-subset.json (and the v1.1 one)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heldout", default="Victoria_(Australia)", help="title of the v2.0 article held out")
    parser.add_argument("--val", default="Sky_(United_Kingdom)",
                        help="title of the v2.0 article that validates (checkpoint and no-answer threshold)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    v2 = json.loads((args.data / "squad-v2.0-dev-subset.json").read_text(encoding="utf-8"))
    titles = [a["title"] for a in v2["data"]]
    for title in (args.heldout, args.val):
        if title not in titles:
            raise SystemExit(f"error: no article titled {title!r} in the v2.0 subset (it has: {', '.join(titles)})")
    if args.heldout == args.val:
        raise SystemExit("error: --val and --heldout name the same article; give two different ones")
    train = [a for a in v2["data"] if a["title"] not in (args.heldout, args.val)]
    val = [a for a in v2["data"] if a["title"] == args.val]
    heldout = [a for a in v2["data"] if a["title"] == args.heldout]
    for name, articles in (("squad-train.json", train), ("squad-val.json", val), ("squad-heldout.json", heldout)):
        (args.out / name).write_text(json.dumps({"version": v2["version"], "data": articles}), encoding="utf-8")
    docs = [p["context"] + "\n" + "\n".join(qa["question"].strip() for qa in p["qas"])
            for a in train for p in a["paragraphs"]]
    (args.out / "pretrain.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")

    held, checking = questions_of(heldout), questions_of(val)
    results: dict[str, Any] = {
        "heldout_article": args.heldout,
        "val_article": args.val,
        "train_questions": len(questions_of(train)),
        "val_questions": len(questions_of(val)),
        "heldout_questions": len(held),
        "heldout_unanswerable": sum(bool(qa.get("is_impossible")) for qa, _ in held),
        "heldout_no_answer": scores({qa["id"]: "" for qa, _ in held}, held),
        "heldout_first_sentence": scores({qa["id"]: first_sentence(c) for qa, c in held}, held),
        "val_no_answer": scores({qa["id"]: "" for qa, _ in checking}, checking),
    }
    v1_path = args.data / "squad-v1.1-dev-subset.json"
    if v1_path.is_file():
        located, kept, dropped = locate_answers(json.loads(v1_path.read_text(encoding="utf-8")))
        (args.out / "squad-v1.1-located.json").write_text(json.dumps(located), encoding="utf-8")
        v1 = questions_of(located["data"])
        results["v1.1"] = {"questions": kept, "left_out_answer_not_in_context": dropped,
                           "first_sentence": scores({qa["id"]: first_sentence(c) for qa, c in v1}, v1)}
    (args.out / "baselines.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
