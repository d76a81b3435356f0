"""Options several objectives share (a file of examples), and the checks the objectives share.

Each objective's options are its own dataclass, in its module (`lmforge.train.objectives` says how). The ones here
are the shared part: `ExamplesFileOptions` (the file of examples, its held-out fraction and source truncation:
seq2seq, contrastive, classification) and `TextPairsOptions` (its two text columns and target truncation: seq2seq,
contrastive). The checks below turn the mistakes a user can make when pairing an objective with a tokenizer or a
data file into one line each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmforge.config import field
from lmforge.data.tokenizer import check_vocab_fits
from lmforge.errors import UserError
from lmforge.train.objectives import Options

if TYPE_CHECKING:
    from lmforge.data.examples import BadRows
    from lmforge.data.loaders import TokenDataset
    from lmforge.train.config import TrainConfig

SPELLING = {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "mask": "<mask>", "sep": "<sep>",
            "cls": "<cls>"}


@dataclass
class ExamplesFileOptions(Options):
    """A file of examples: text pairs (seq2seq, contrastive) or labelled texts (classification)."""

    pairs: str | None = field(None, "TSV or CSV (with a header row) or JSONL file of text pairs, or of (text, label) "
                                    "pairs for classification (contrastive without it: unsupervised SimCSE on the "
                                    "prepared data)")
    pairs_val_fraction: float = field(0.1, "fraction of the examples held out for evaluation (chosen by a hash of "
                                           "the example's index, so always the same ones)",
                                      min=0, lt=1)
    max_source_len: int | None = field(None, "truncate sources (classification: texts) to this many tokens "
                                             "(default: no truncation; a source longer than the model's positions, "
                                             "or a text longer than an lstm's max_seq_len, is an error)",
                                        min=2)


@dataclass
class TextPairsOptions(ExamplesFileOptions):
    """A file of (source, target) text pairs."""

    source_column: str = field("source", "column (TSV/CSV header / JSON key) of the source or anchor text")
    target_column: str = field("target", "column of the target or positive text")
    max_target_len: int | None = field(None, "truncate targets to this many tokens (default: no truncation)",
                                        min=2)


def length_buckets_field(examples: str, measured_by: str) -> Any:
    """The `length_buckets` option, one text for every objective that batches a file's examples by length
    (`EpochSampler`'s pools of batches)."""
    return field(0, f"batch {examples} of similar length: the epoch's shuffled {examples} are sorted by "
                    f"{measured_by} in pools of this many batches, and the batches shuffled (each batch is padded to "
                    f"its longest: random batches of SST-2's phrases or Multi30k's pairs are more than half "
                    f"padding); 0: random batches", min=0)


SKIP_BAD_ROWS_FLAG = "--objective-options.skip-bad-rows"


def skip_bad_rows_field(text: str, target: str) -> Any:
    """The `skip_bad_rows` option, one text for every objective that reads a file of examples
    (`data.examples.BadRows`)."""
    return field(False, f"skip (and count) rows with an empty {text} or {target}, or a {text} longer than the "
                        f"model's context when nothing truncates it, instead of stopping at the first")


def report_bad_rows(rt, *bad_rows: BadRows) -> int:
    """Print (rank 0) one line per file with rows skipped as bad; the number skipped in all."""
    for bad in bad_rows:
        if bad.skipped and rt.is_main:
            from lmforge.progress import console

            console.print(f"[yellow]{bad.summary()}[/yellow]", highlight=False)
    return sum(bad.skipped for bad in bad_rows)


def require_special(special_ids: dict[str, int], names: Iterable[str], objective: str,
                    where: str | Path | None, why: str = "") -> None:
    """One line naming every special token this objective needs that the tokenizer lacks."""
    missing = [n for n in names if n not in special_ids]
    if not missing:
        return
    have = ", ".join(SPELLING.get(n, n) for n in special_ids) or "none"
    raise UserError(f"objective '{objective}' needs the special token(s) {', '.join(SPELLING[n] for n in missing)}"
                    f"{' ' + why if why else ''}, which the tokenizer lacks (it has: {have})", where=where,
                    fix="re-run `lmforge prepare` with a tokenizer that has them (its default special tokens "
                        "<pad> <unk> <bos> <eos> <mask> <sep> <cls> include them all)")


VOCAB_FIX = "leave model.vocab_size out (it is taken from the tokenizer) or raise it"


def require_vocab(cfg: TrainConfig, vocab_size: int, where: str | Path | None) -> None:
    """The data's tokenizer fits the model being trained (the one check, `data.tokenizer.check_vocab_fits`)."""
    check_vocab_fits(vocab_size, cfg.model.vocab_size, model="model.vocab_size", where=where, fix=VOCAB_FIX)


def val_split(cfg: TrainConfig) -> TokenDataset | None:
    """The data's val split, or None when it has none (the objective then trains without evaluation)."""
    from lmforge.data.loaders import TokenDataset

    try:
        return TokenDataset.open(cfg.data, "val")
    except UserError:
        return None


def warn_no_evaluation(rt, reason: str) -> None:
    """Say once (rank 0) why this run will have no evaluation, and so no best checkpoint or early stopping."""
    if rt.is_main:
        from lmforge.progress import console

        console.print(f"[yellow]{reason}: no evaluation, no best checkpoint, no early stopping[/yellow]")


def require_pair_lengths(cfg: TrainConfig) -> None:
    """Truncation lengths of text pairs no longer than the model's positions."""
    o, max_len = cfg.objective_options, cfg.model.max_seq_len
    for name in ("max_source_len", "max_target_len"):
        if getattr(o, name) is not None and getattr(o, name) > max_len:
            raise UserError(f"objective_options.{name} {getattr(o, name)} is longer than the model's max_seq_len "
                            f"{max_len}", fix=f"lower it to at most {max_len}")


__all__ = ["VOCAB_FIX", "ExamplesFileOptions", "TextPairsOptions", "require_pair_lengths", "require_special",
           "require_vocab", "val_split", "warn_no_evaluation"]
