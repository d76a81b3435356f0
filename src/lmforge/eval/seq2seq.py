"""Score a sequence-to-sequence checkpoint on a file of pairs: generate each target, then BLEU / chrF (translation)
or ROUGE-1/2/L (summarisation).

    from lmforge.eval.seq2seq import evaluate_seq2seq
    from lmforge.infer.generate import BeamSearchConfig

    result = evaluate_seq2seq("runs/mt", "test.tsv", task="translation", out="runs/mt-test",
                              beams=BeamSearchConfig(num_beams=4, no_repeat_ngram_size=3))
    print(result.scores["bleu"], result.signatures["bleu"])

Any checkpoint that can generate (`models.registry.can(cfg, GENERATE)`): an encoder-decoder trained with
`--objective seq2seq`, or a decoder trained with it on the prompt template `<eos> source <sep>`
(`data.examples.seq2seq_source`, the one template of training and generation). Generation goes through the one
sampler of `lmforge.infer.generate` (greedy, or `beam_search_ids` with a `BeamSearchConfig` of num_beams > 1:
the beam options `lmforge generate` takes), batch by batch; the outputs are decoded without special tokens and
scored against the file's reference texts by `eval.metrics` (sacrebleu, rouge-score). `generate_targets` is also
what the seq2seq objective's `generate_eval` evaluation (greedy) and `lmforge predict` call.

Written into `out`: metrics.json (every score, the sacrebleu signatures, the settings and counts) and
predictions.jsonl (source, reference, generated; one line per pair, in file order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from lmforge.atomic import atomic_file

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from torch import nn

    from lmforge.data.examples import BadRows
    from lmforge.infer.generate import BeamSearchConfig
    from lmforge.models.config import ModelConfig

GENERATION_TASKS = {"translation": ("bleu", "chrf"), "summarisation": ("rouge_1", "rouge_2", "rouge_l")}
METRICS_FILE, PREDICTIONS_FILE = "metrics.json", "predictions.jsonl"


@dataclass
class Seq2SeqEval:
    checkpoint: Path
    file: Path
    task: str
    scores: dict[str, float]  # bleu, chrf (0-100), rouge_1, rouge_2, rouge_l (0-1)
    signatures: dict[str, str]  # sacrebleu's, for bleu and chrf
    pairs: int
    metrics: Path
    predictions: Path
    bad_rows: BadRows | None = None  # the pairs skipped with skip_bad_rows, by reason; summary() is the line to print


def generate_targets(model: nn.Module, tokenizer: Tokenizer, sources: Sequence[Sequence[int]],
                     special_ids: Mapping[str, int], *, max_new_tokens: int, beams: BeamSearchConfig | None = None,
                     batch_size: int = 16) -> list[str]:
    """The generated target text for each framed source (`seq2seq_source`): greedy, or by beam search with
    `beams`' options when its num_beams > 1 (refused in one line: a beam-only option without it)."""
    from lmforge.data.tokenizer import decoder_start_id
    from lmforge.infer.generate import GenerationConfig, beam_search_ids, check_beam_options, generate_ids
    from lmforge.models.registry import Kind, kind_of

    cfg = GenerationConfig.deterministic(max_new_tokens, beams)
    check_beam_options(cfg)
    special = dict(special_ids)
    start = decoder_start_id(special) if kind_of(model.cfg) == Kind.ENCODER_DECODER else None
    run = beam_search_ids if cfg.num_beams > 1 else generate_ids
    texts: list[str] = []
    for at in range(0, len(sources), batch_size):
        chunk = [list(s) for s in sources[at:at + batch_size]]
        ids = run(model, chunk, cfg, eos_id=special["eos"], pad_id=special.get("pad", 0), decoder_start_id=start)
        texts += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]
    return texts


@overload
def encode_sources(model_cfg: ModelConfig, tokenizer: Tokenizer, special_ids: Mapping[str, int],
                   texts: Sequence[str], *, max_source_len: int | None, where: str | Path,
                   needed_for: str, bad_rows: None = None) -> list[list[int]]: ...


@overload
def encode_sources(model_cfg: ModelConfig, tokenizer: Tokenizer, special_ids: Mapping[str, int],
                   texts: Sequence[str], *, max_source_len: int | None, where: str | Path,
                   needed_for: str, bad_rows: BadRows) -> list[list[int] | None]: ...


def encode_sources(model_cfg: ModelConfig, tokenizer: Tokenizer, special_ids: Mapping[str, int],
                   texts: Sequence[str], *, max_source_len: int | None, where: str | Path,
                   needed_for: str, bad_rows: BadRows | None = None) -> list[list[int]] | list[list[int] | None]:
    """Each source text framed as the seq2seq objective frames it; one line when it does not fit the model (or
    cut to `max_source_len` tokens), or when the tokenizer lacks the template's special tokens. With `bad_rows` a
    source too long is rejected through it: when it skips, the source's entry is None (`kept_rows` drops them)."""
    from lmforge.data.examples import TOO_LONG, BadRows, seq2seq_source
    from lmforge.errors import UserError
    from lmforge.models.registry import Kind, kind_of

    needs = ("eos",) if kind_of(model_cfg) == Kind.ENCODER_DECODER else ("eos", "sep")
    missing = [f"<{n}>" for n in needs if n not in special_ids]
    if missing:
        raise UserError(f"{needed_for} needs the special token(s) {', '.join(missing)} of the seq2seq template, which "
                        f"the checkpoint's tokenizer lacks", fix="score a checkpoint trained with --objective seq2seq")
    framing = len(seq2seq_source(model_cfg, special_ids, []))
    limit = model_cfg.max_seq_len - framing - (1 if kind_of(model_cfg) == Kind.DECODER else 0)
    out: list[list[int] | None] = []
    for n, enc in enumerate(tokenizer.encode_batch(list(texts), add_special_tokens=False), start=1):
        ids = enc.ids
        if max_source_len is not None:
            ids = ids[:min(max_source_len, limit)]
        if len(ids) > limit:
            message = (f"the source of row {n} has {len(ids)} tokens, more than the {limit} the model's "
                       f"{model_cfg.max_seq_len} positions leave (with the template's {framing} and room to generate)")
            fix = "truncate sources with --max-source-len N, or shorten the text"
            (bad_rows or BadRows(where)).reject(TOO_LONG, message, fix=fix)  # raises unless it skips
            out.append(None)
            continue
        out.append(seq2seq_source(model_cfg, special_ids, ids))
    return out


def evaluate_seq2seq(checkpoint: str | Path, file: str | Path, *, task: str, out: str | Path,
                     source_column: str = "source", target_column: str = "target", batch_size: int = 16,
                     max_source_len: int | None = None, max_new_tokens: int = 128,
                     beams: BeamSearchConfig | None = None, skip_bad_rows: bool = False,
                     device: str = "auto", precision: str = "auto", verify: bool = True) -> Seq2SeqEval:
    """Generate a target for every pair of `file` with `checkpoint` (or a run directory's best) and score it;
    greedy, or beam search with `beams` (num_beams > 1).

    An empty source or reference, or a source too long for the model (without `max_source_len`), is one error line,
    or with `skip_bad_rows` the pair is left out and counted (`Seq2SeqEval.bad_rows`)."""
    from lmforge.atomic import write_json
    from lmforge.config import to_dict
    from lmforge.data.examples import BadRows, kept_rows, read_pairs
    from lmforge.errors import UserError
    from lmforge.eval.metrics import bleu, chrf, rouge
    from lmforge.eval.task_checkpoint import open_task_checkpoint, require_file
    from lmforge.infer.generate import BeamSearchConfig, GenerationConfig, check_beam_options
    from lmforge.models.registry import GENERATE

    if task not in GENERATION_TASKS:
        raise ValueError(f"task must be one of {sorted(GENERATION_TASKS)}")
    beams = (beams or BeamSearchConfig()).beam_options()
    check_beam_options(GenerationConfig.deterministic(max_new_tokens, beams))  # before loading anything
    file = require_file(file, "pairs file", fix="pass --file FILE (.tsv or .csv with a header row, or .jsonl)")
    ckpt = open_task_checkpoint(checkpoint, capability=GENERATE, needed_for=task,
                                fix="pass a checkpoint trained with --objective seq2seq", device=device,
                                precision=precision, verify=verify)
    path, model, cfg, tok, special, rt = ckpt.path, ckpt.model, ckpt.cfg, ckpt.tokenizer, ckpt.special, ckpt.runtime
    bad_rows = BadRows(file, skip=skip_bad_rows, flag="--skip-bad-rows")
    rows = read_pairs(file, source_column, target_column, flags="--source-column / --target-column",
                      bad_rows=bad_rows)
    rows, sources = kept_rows(rows, encode_sources(cfg, tok, special, [s for s, _ in rows],
                                                   max_source_len=max_source_len, where=file, needed_for=task,
                                                   bad_rows=bad_rows))
    if not rows:
        raise UserError(f"every pair was skipped as bad ({bad_rows.summary()})", where=file,
                        fix="truncate sources with --max-source-len N")
    with rt.autocast():
        generated = generate_targets(model, tok, sources, special, max_new_tokens=max_new_tokens, beams=beams,
                                     batch_size=batch_size)
    references = [t for _, t in rows]
    b, c = bleu(generated, references), chrf(generated, references)
    scores = {"bleu": b.score, "chrf": c.score, **rouge(generated, references)}
    signatures = {"bleu": b.signature, "chrf": c.signature}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics, predictions = out / METRICS_FILE, out / PREDICTIONS_FILE
    settings: dict[str, Any] = {"max_new_tokens": max_new_tokens, **to_dict(beams), "max_source_len": max_source_len}
    write_json(metrics, {"task": task, "checkpoint": str(path), "file": str(file), "source_column": source_column,
                         "target_column": target_column, **scores, "signatures": signatures,
                         "generation": settings,
                         "counts": {"pairs": len(rows), "skipped": bad_rows.skipped,
                                    "skipped_by_reason": dict(bad_rows.counts)}})
    with atomic_file(predictions, "w") as f:
        for (source, reference), text in zip(rows, generated, strict=True):
            f.write(json.dumps({"source": source, "reference": reference, "generated": text},
                               ensure_ascii=False) + "\n")
    return Seq2SeqEval(checkpoint=path, file=file, task=task, scores=scores, signatures=signatures, pairs=len(rows),
                       metrics=metrics, predictions=predictions, bad_rows=bad_rows)


__all__ = ["GENERATION_TASKS", "Seq2SeqEval", "encode_sources", "evaluate_seq2seq", "generate_targets"]
