"""Synthetic SQuAD v2.0 questions cut from the training articles' own sentences (cloze translation, after Lewis et
al. 2019, "Unsupervised Question Answering by Cloze Translation"), for more span supervision than 950 questions.

    python examples/squad/cloze.py runs/squad/squad-train.json --out runs/squad/squad-cloze.json [--seed 0]

For every sentence of every paragraph, up to `--per-sentence` answer candidates are taken: a year ("when"), another
number ("how many"), a run of capitalised words ("what"), or a noun phrase after an article ("what"). The question
is the sentence's words around the span (at most `--radius` either side) with the span replaced by its wh-word,
a few words dropped at random (`--drop`) and, mostly, the wh-word moved to the front, as questions start; the
answer is the span, the context the paragraph. A real question paraphrases its sentence; these copy it, noisily,
so what they teach is to find the sentence the question overlaps and take the missing span from it.

Unanswerable ones (`--unanswerable`, the fraction of all; v2.0's own subset has half) are made as SQuAD v2.0's
annotators made theirs, by changing a question so its context no longer answers it: one content word of a cloze
question swapped for a word of another paragraph that its context lacks (the question still overlaps the
context everywhere else), or, for a third of them, the cloze question put to another paragraph of the article.

Only the file it is given is read (the training articles): no validation or scored context is used. Written: a
SQuAD v2.0 JSON file of the synthetic questions, with the given file's real questions after them
(`--with-real`, as the recipe trains on both at once).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path
from typing import Any

SENTENCE = re.compile(r"[^.!?]*[.!?]+(?=\s|$)|[^.!?]+$")
WORD = re.compile(r"\S+")
CANDIDATES = [  # (pattern, wh-word); the first group is the answer
    (re.compile(r"\b(1[0-9]{3}|20[0-9]{2})\b"), "when"),
    (re.compile(r"\b(\d[\d,.]*(?:\s(?:million|billion|thousand|hundred|percent|per cent))?%?)(?=[\s,.;:)]|$)"),
     "how many"),
    (re.compile(r"(?<![\w'-])([A-Z][\w'-]*(?:\s+(?:of\s+|the\s+|de\s+|and\s+)?[A-Z][\w'-]*)*)"), "what"),
    (re.compile(r"\b(?:the|a|an)\s+([a-z][\w-]*(?:\s+[a-z][\w-]*)?)\b"), "what"),
]
STOP = frozenset(re.findall(r"\S+", """the a an of in on at to for and or but is are was were be been by with as
    from that this it its which who what when where how their they he she his her also into than then there these
    those has have had not"""))
SENTENCE_OPENERS = frozenset(re.findall(r"\S+", """The A An In On At It This These Those There He She They His Her
    Its As By For From After Before During While When Although However Since"""))


def sentences(context: str) -> list[tuple[int, str]]:
    """(character offset, text) of each sentence of the context."""
    return [(m.start(), m.group()) for m in SENTENCE.finditer(context) if m.group().strip()]


def answer_spans(sentence: str) -> list[tuple[int, int, str]]:
    """(start, end, wh-word) of the answer candidates of one sentence, not overlapping, in order of the patterns."""
    spans: list[tuple[int, int, str]] = []
    for pattern, wh in CANDIDATES:
        for m in pattern.finditer(sentence):
            start, end = m.span(1)
            text = sentence[start:end]
            if text in SENTENCE_OPENERS or text.split()[-1].lower() in STOP or len(text) < 2:
                continue
            if any(start < e and s < end for s, e, _ in spans):
                continue
            spans.append((start, end, wh))
    return spans


def cloze_question(sentence: str, start: int, end: int, wh: str, rng: random.Random, radius: int,
                   drop: float) -> str:
    """The sentence's words around the span with the span replaced by `wh`, noised: words dropped, wh moved."""
    before = WORD.findall(sentence[:start])[-radius:]
    after = WORD.findall(sentence[end:])[:radius]
    words = [w for w in before + after if any(ch.isalnum() for ch in w) and rng.random() >= drop]
    if rng.random() < 0.75:
        words = [wh, *words]
    else:
        at = min(len(before), len(words))
        words = [*words[:at], wh, *words[at:]]
    text = " ".join(words).rstrip(" .,;:!?")
    return text[0].upper() + text[1:] + "?"


def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z][a-z]{3,}", text) if w.lower() not in STOP]


def swapped(question: str, context: str, vocabulary: list[str], rng: random.Random) -> str | None:
    """The question with one of its content words (one the context has) replaced by a word the context lacks."""
    present = [w for w in content_words(question) if w.lower() in context.lower()]
    lowered = context.lower()
    for _ in range(20):
        if not present:
            return None
        old, new = rng.choice(present), rng.choice(vocabulary)
        if new.lower() not in lowered and new.lower() != old.lower():
            return re.sub(rf"\b{re.escape(old)}\b", new, question, count=1)
    return None


def generate(squad: dict[str, Any], per_sentence: int, unanswerable: float, radius: int, drop: float,
             seed: int, copies: int = 1) -> list[dict[str, Any]]:
    """Paragraphs {"context", "qas"} of synthetic questions over the file's paragraphs (`copies` passes, each with
    its own draws of spans and noise)."""
    rng = random.Random(seed)
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    vocabulary = sorted({w for c in contexts for w in content_words(c)})
    out: dict[str, list[dict[str, Any]]] = {c: [] for c in contexts}
    n = 0
    for k, context in [(k, c) for _ in range(copies) for k, c in enumerate(contexts)]:
        for offset, sentence in sentences(context):
            spans = answer_spans(sentence)
            for start, end, wh in rng.sample(spans, min(per_sentence, len(spans))):
                question = cloze_question(sentence, start, end, wh, rng, radius, drop)
                n += 1
                qa: dict[str, Any] = {"id": f"cloze-{n}", "question": question}
                if rng.random() < unanswerable:
                    if rng.random() < 2 / 3:
                        changed = swapped(question, context, vocabulary, rng)
                        if changed is None:
                            continue
                        out[context].append({**qa, "question": changed, "answers": [], "is_impossible": True})
                    else:
                        other = contexts[(k + rng.randrange(1, len(contexts))) % len(contexts)]
                        if sentence[start:end] in other:
                            continue
                        out[other].append({**qa, "answers": [], "is_impossible": True})
                    continue
                answer = {"text": sentence[start:end], "answer_start": offset + start}
                out[context].append({**qa, "answers": [answer], "is_impossible": False})
    return [{"context": c, "qas": qas} for c, qas in out.items() if qas]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("squad", type=Path, help="SQuAD file of the training articles (split.py's squad-train.json)")
    parser.add_argument("--out", type=Path, required=True, help="SQuAD v2.0 JSON file to write")
    parser.add_argument("--per-sentence", type=int, default=3, help="answer candidates questioned per sentence")
    parser.add_argument("--unanswerable", type=float, default=0.5, help="fraction made unanswerable")
    parser.add_argument("--radius", type=int, default=8, help="words of the sentence kept either side of the span")
    parser.add_argument("--drop", type=float, default=0.15, help="probability of dropping each kept word")
    parser.add_argument("--copies", type=int, default=1, help="passes over the paragraphs, each drawn anew")
    parser.add_argument("--with-real", action="store_true", help="append the file's own questions")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 <= args.unanswerable <= 1 or not 0 <= args.drop < 1 or min(args.per_sentence, args.radius,
                                                                         args.copies) < 1:
        raise SystemExit("error: --unanswerable in [0, 1], --drop in [0, 1), --per-sentence, --radius and --copies "
                         ">= 1")
    squad = json.loads(args.squad.read_text(encoding="utf-8"))
    paragraphs = generate(squad, args.per_sentence, args.unanswerable, args.radius, args.drop, args.seed,
                          args.copies)
    data = [{"title": "cloze", "paragraphs": paragraphs}]
    if args.with_real:
        data += squad["data"]
    args.out.write_text(json.dumps({"version": "v2.0", "data": data}), encoding="utf-8")
    qas = [qa for p in paragraphs for qa in p["qas"]]
    print(json.dumps({"synthetic_questions": len(qas), "unanswerable": sum(qa["is_impossible"] for qa in qas),
                      "real_questions": sum(len(p["qas"]) for a in squad["data"] for p in a["paragraphs"])
                      if args.with_real else 0}))


if __name__ == "__main__":
    main()
