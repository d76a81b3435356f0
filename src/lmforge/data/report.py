"""The prepare report: one JSON file for tools, a short summary for people.

What a user checks after preparing a corpus: how much text went in and how much survived cleaning (and why the
rest did not), how many tokens it became and how well the tokenizer compresses it (bytes per token), how much
personal data was scrubbed, how often the tokenizer fell back to <unk>, and the most frequent tokens (a tokenizer
trained on the wrong column or on markup shows up there at once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from lmforge.atomic import write_json
from lmforge.data.clean import CleanStats
from lmforge.data.corpus import ReadStats

REPORT = "report.json"
TOP_TOKENS = 20


def build_report(manifest: dict[str, Any], tok: Tokenizer, token_counts: np.ndarray, read: ReadStats,
                 clean: CleanStats, timings: dict[str, float], tokenizer_kind: str | None = None) -> dict[str, Any]:
    special = manifest["special_ids"]
    eos = special.get("eos")
    counts = token_counts.copy()
    separators = int(counts[eos]) if eos is not None else 0
    if eos is not None:
        counts[eos] = 0  # the <eos> between documents is not text
    text_tokens = int(counts.sum())
    unk = special.get("unk")
    unk_count = int(counts[unk]) if unk is not None and unk < len(counts) else 0
    top = np.argsort(-counts, kind="stable")[:TOP_TOKENS]
    splits = {name: {k: s[k] for k in ("documents", "tokens", "bytes")} | {"shards": len(s["shards"])}
              for name, s in manifest["splits"].items()}
    return {
        "documents": {"read": read.documents, "after_cleaning": manifest["documents"], **{
            f"{name}": s["documents"] for name, s in splits.items()}},
        "bytes": {"read": read.bytes, "after_cleaning": manifest["bytes"]},
        "tokens": {"total": manifest["tokens"], "text": text_tokens, "eos_separators": separators,
                   **{name: s["tokens"] for name, s in splits.items()}},
        "bytes_per_token": manifest["bytes"] / text_tokens if text_tokens else 0.0,
        "splits": splits,
        "tokenizer": {"kind": tokenizer_kind, "vocab_size": manifest["vocab_size"], "dtype": manifest["dtype"],
                      "special_ids": special, "sha256": manifest["tokenizer"]["sha256"],
                      "tokens_used": int((counts > 0).sum())},
        "unknown_tokens": unk_count,
        "unknown_token_rate": unk_count / text_tokens if text_tokens else 0.0,
        "top_tokens": [{"id": int(i), "token": tok.id_to_token(int(i)), "count": int(counts[i])}
                       for i in top if counts[i] > 0],
        "read": read.as_dict(),
        "clean": clean.as_dict(),
        "timings": timings,
        "sources": manifest["sources"],
    }


def write_report(report: dict[str, Any], directory: str | Path) -> Path:
    path = Path(directory) / REPORT
    write_json(path, report)
    return path


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def summary_lines(report: dict[str, Any], out: str | Path) -> list[str]:
    """A few lines for the terminal; everything else is in report.json."""
    d, b, t, c, r = report["documents"], report["bytes"], report["tokens"], report["clean"], report["read"]
    dropped = {"exact duplicates": c["exact_duplicates"], "near duplicates": c["near_duplicates"],
               "empty": c["dropped_empty"], "too short": c["dropped_short"], "too long": c["dropped_long"],
               "invalid UTF-8 skipped": r["skipped_invalid_utf8"]}
    dropped_txt = ", ".join(f"{v:,} {k}" for k, v in dropped.items() if v) or "none"
    pii = {k.removeprefix("pii_"): v for k, v in c.items() if k.startswith("pii_")}
    pii_txt = ", ".join(f"{v:,} {k}" for k, v in pii.items() if v) or "none found"
    splits = ", ".join(f"{name} {s['documents']:,} docs / {s['tokens']:,} tokens"
                       for name, s in report["splits"].items())
    tok = report["tokenizer"]
    top = " ".join(repr(x["token"]) for x in report["top_tokens"][:8])
    tm = report["timings"]
    return [
        f"prepared {out}",
        f"  documents:   {d['read']:,} read, {d['after_cleaning']:,} kept (dropped: {dropped_txt})",
        f"  text:        {_mb(b['read'])} read, {_mb(b['after_cleaning'])} after cleaning",
        f"  PII scrubbed: {pii_txt}",
        f"  tokenizer:   {tok['kind'] or 'reused'}, vocab {tok['vocab_size']:,} ({tok['tokens_used']:,} used), "
        f"{report['bytes_per_token']:.2f} bytes/token, unknown-token rate {report['unknown_token_rate']:.4%}",
        f"  tokens:      {t['total']:,} ({splits})",
        f"  top tokens:  {top}",
        f"  time:        {tm['total_s']:.1f} s (read+clean {tm['read_clean_s']:.1f} s, tokenizer "
        f"{tm['tokenizer_s']:.1f} s, encode {tm['encode_s']:.1f} s on {tm['encode_workers']} process(es))",
    ]
