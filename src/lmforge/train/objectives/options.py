"""Options of the pretraining objectives (one dataclass for all of them), and the checks they share.

`ObjectiveOptions` is the `objective_options` section of a training config (`--objective-options.mlm-probability
0.2`, or `objective_options: {mlm_probability: 0.2}` in YAML); each objective reads only the fields it documents.
The checks below turn the mistakes a user can make when pairing an objective with a model, a tokenizer or a data
file into one line each.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lmforge.config import field
from lmforge.data.tokenizer import check_vocab_fits
from lmforge.errors import UserError

if TYPE_CHECKING:
    from lmforge.data.loaders import TokenDataset
    from lmforge.train.config import TrainConfig

SPELLING = {"pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "mask": "<mask>", "sep": "<sep>",
            "cls": "<cls>"}


@dataclass
class ObjectiveOptions:
    # masked LM (mlm, mlm_nsp)
    mlm_probability: float = field(0.15, "mlm: fraction of tokens (or words) selected for prediction")
    mask_replace: float = field(0.8, "mlm: of the selected tokens, the fraction replaced by <mask>")
    random_replace: float = field(0.1, "mlm: of the selected tokens, the fraction replaced by a random token "
                                       "(the rest are kept as they are)")
    whole_word_mask: bool = field(False, "mlm: select whole words (all their tokens together), not single tokens")
    nsp: bool = field(True, "mlm_nsp: add the next-sentence loss (off: the same <cls> A <sep> B <sep> inputs, "
                            "MLM loss only)")
    # span corruption
    span_noise_density: float = field(0.15, "span_corruption: fraction of the input tokens noised")
    span_mean_length: float = field(3.0, "span_corruption: mean length of a noised span")
    sentinels: int = field(100, "span_corruption: sentinel ids added after the tokenizer's vocabulary")
    # contrastive
    contrastive_temperature: float = field(0.05, "contrastive: temperature of the InfoNCE softmax")
    # text pairs (seq2seq, supervised contrastive) and labelled texts (classification)
    pairs: str | None = field(None, "seq2seq / contrastive / classification: TSV (with a header row) or JSONL file "
                                    "of text pairs, or of (text, label) pairs for classification (contrastive "
                                    "without it: unsupervised SimCSE on the prepared data)")
    source_column: str = field("source", "pairs: column (TSV header / JSON key) of the source or anchor text")
    target_column: str = field("target", "pairs: column of the target or positive text")
    text_column: str = field("text", "classification: column of the text")
    label_column: str = field("label", "classification: column of the label (text, or a JSON number or boolean)")
    pairs_val_fraction: float = field(0.1, "pairs: fraction held out for evaluation (chosen by a hash of the "
                                           "pair's index, so always the same pairs)")
    max_source_len: int | None = field(None, "pairs: truncate sources (classification: texts) to this many tokens "
                                             "(default: no truncation; a source longer than the model's positions, "
                                             "or a text longer than an lstm's max_seq_len, is an error)")
    max_target_len: int | None = field(None, "pairs: truncate targets to this many tokens (default: no "
                                             "truncation)")

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.mlm_probability < 1.0:
            problems.append(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if self.mask_replace < 0 or self.random_replace < 0 or self.mask_replace + self.random_replace > 1.0:
            problems.append("mask_replace and random_replace must be non-negative and add up to at most 1")
        if not 0.0 < self.span_noise_density < 1.0:
            problems.append(f"span_noise_density must be in (0, 1), got {self.span_noise_density}")
        if self.span_mean_length < 1.0:
            problems.append(f"span_mean_length must be at least 1, got {self.span_mean_length}")
        if self.sentinels < 1:
            problems.append(f"sentinels must be positive, got {self.sentinels}")
        if self.contrastive_temperature <= 0:
            problems.append(f"contrastive_temperature must be positive, got {self.contrastive_temperature}")
        if not 0.0 <= self.pairs_val_fraction < 1.0:
            problems.append(f"pairs_val_fraction must be in [0, 1), got {self.pairs_val_fraction}")
        for name in ("max_source_len", "max_target_len"):
            if getattr(self, name) is not None and getattr(self, name) < 2:
                problems.append(f"{name} must be at least 2")
        if problems:
            raise UserError("invalid objective options: " + "; ".join(problems),
                            fix="see the objective_options section of `lmforge train --help`")


def objective_options(cfg: TrainConfig) -> ObjectiveOptions:
    """The run's objective options (defaults where the config has none)."""
    return getattr(cfg, "objective_options", None) or ObjectiveOptions()


FAMILY_KINDS = {"bert": "encoder", "t5": "encoder-decoder", "gpt": "decoder", "llama": "decoder",
                "lstm": "recurrent"}
FAMILY_PRESETS = {"bert": "bert-tiny", "t5": "t5-tiny", "gpt": "tiny", "llama": "llama-tiny", "lstm": "lstm-tiny"}
KIND_OBJECTIVES = {"encoder": "mlm, mlm_nsp, contrastive", "encoder-decoder": "span_corruption, seq2seq",
                   "decoder": "causal_lm", "recurrent": "causal_lm, classification"}


def require_family(cfg: TrainConfig, objective: str, families: Iterable[str]) -> None:
    """One line when the model family is not one this objective trains."""
    families = tuple(families)
    family = cfg.model.family
    if family in families:
        return
    kinds = sorted({FAMILY_KINDS[f] for f in families})
    kind = FAMILY_KINDS.get(family, "?")
    raise UserError(f"objective '{objective}' trains {' or '.join(kinds)} models (family "
                    f"{', '.join(families)}), but the model is family '{family}' ({kind})",
                    fix=f"pass --preset {FAMILY_PRESETS[families[0]]} (or another {families[0]} preset), or an "
                        f"objective for {kind} models ({KIND_OBJECTIVES.get(kind, 'see lmforge train --help')})")


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
    o, max_len = objective_options(cfg), cfg.model.max_seq_len
    for name in ("max_source_len", "max_target_len"):
        if getattr(o, name) is not None and getattr(o, name) > max_len:
            raise UserError(f"objective_options.{name} {getattr(o, name)} is longer than the model's max_seq_len "
                            f"{max_len}", fix=f"lower it to at most {max_len}")


__all__ = ["VOCAB_FIX", "ObjectiveOptions", "objective_options", "require_family", "require_pair_lengths",
           "require_special", "require_vocab", "val_split", "warn_no_evaluation"]
