"""Encoding throughput of `lmforge prepare` against a plain `tokenizers` `encode_batch` loop, same text, same run.

The text is the built-in corpus (Python's documentation), repeated with a per-copy marker until it reaches
--mb megabytes, so that the comparison needs nothing beyond this repository. Both sides encode the same
documents with the same byte-level BPE tokenizer (trained here; its training time is reported too):

- peer: one process calling `Tokenizer.encode_batch` on batches of documents, as most scripts do (the library
  uses its own threads inside the call, on every core);
- lmforge: `encode_spool`, the encode step of `lmforge prepare` (one process per core, word cache, shards on
  disk, manifest), with --workers processes.

    PYTHONPATH=src python3 benchmarks/prepare_throughput.py            # 64 MB on every core
    PYTHONPATH=src python3 benchmarks/prepare_throughput.py --mb 16 --workers 2
    PYTHONPATH=src python3 benchmarks/prepare_throughput.py --long-line --mb 4   # one line, no whitespace

--long-line compares the same encode step on two texts of --mb megabytes: the corpus as documents, and one
line of only its letters (no whitespace, no punctuation: a single "word" for the GPT-2 pattern, the worst case
for BPE). lmforge cuts such runs every LONG_RUN_CHARS characters (`split_long_runs`); the target is a long line
at >= 50% of the documents' MB/s.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def corpus(mb: float) -> list[str]:
    from lmforge.data.builtin import python_docs

    base = list(python_docs())
    docs, size, copy = [], 0, 0
    while size < mb * 1e6:
        for text in base:
            doc = f"[copy {copy}] {text}"
            docs.append(doc)
            size += len(doc.encode("utf-8"))
        copy += 1
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=64.0, help="megabytes of text to encode")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--workers", type=int, default=0, help="lmforge encode processes (0 = every core)")
    parser.add_argument("--batch", type=int, default=1000, help="documents per encode_batch call (peer)")
    parser.add_argument("--skip-training", action="store_true",
                        help="--long-line: skip timing tokenizer training on the line (0.2 MB/s: minutes at 50 MB)")
    parser.add_argument("--long-line", action="store_true",
                        help="documents against one line of --mb MB without whitespace (see above)")
    args = parser.parse_args()
    if args.long_line:
        long_line(args)
        return

    from tokenizers import Tokenizer

    from lmforge.data.shards import TextSpool, encode_spool, resolve_workers
    from lmforge.data.tokenizer import TokenizerOptions, save_tokenizer, train_tokenizer

    os.environ.setdefault("LMFORGE_QUIET", "1")
    docs = corpus(args.mb)
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    base_docs = docs[: len(docs) // max(1, round(n_bytes / 2e6))]  # about one copy of the corpus

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        t = time.perf_counter()
        tok = train_tokenizer(base_docs, TokenizerOptions(kind="bpe", vocab_size=args.vocab_size))
        train_s = time.perf_counter() - t
        path = save_tokenizer(tok, tmp_path / "tok")
        train_mb = sum(len(d.encode("utf-8")) for d in base_docs) / 1e6

        spool = TextSpool(tmp_path / "spool")
        for d in docs:
            spool.add(d)
        spool.close()

        peer = Tokenizer.from_file(str(path))
        t = time.perf_counter()
        peer_tokens = 0
        for i in range(0, len(docs), args.batch):
            peer_tokens += sum(len(e.ids) for e in peer.encode_batch(docs[i:i + args.batch], add_special_tokens=False))
        peer_s = time.perf_counter() - t

        result = encode_spool(tmp_path / "spool", tmp_path / "out", path, val_fraction=0.0, workers=args.workers)
        ours_s = result.seconds
        ours_tokens = result.manifest["tokens"] - result.manifest["documents"]  # minus the <eos> separators

    assert ours_tokens == peer_tokens, f"token counts differ: {ours_tokens} vs {peer_tokens}"
    mb = n_bytes / 1e6
    rows = [
        ("tokenizers encode_batch (1 process)", peer_s, mb / peer_s, 1.0),
        (f"lmforge prepare encode ({result.workers} proc.)", ours_s, mb / ours_s, peer_s / ours_s),
    ]
    print(f"\nencode {mb:.1f} MB ({len(docs):,} documents, {peer_tokens:,} tokens), byte-level BPE vocab "
          f"{args.vocab_size}, {resolve_workers(0)} cores")
    print(f"{'':42s} {'seconds':>8s} {'MB/s':>8s} {'ratio':>7s}")
    for name, s, rate, ratio in rows:
        print(f"{name:42s} {s:8.2f} {rate:8.2f} {ratio:6.2f}x")
    print(f"tokenizer training: {train_mb:.1f} MB in {train_s:.2f} s ({train_mb / train_s:.2f} MB/s)")
    print(f"tokens/s: lmforge {ours_tokens / ours_s:,.0f}, peer {peer_tokens / peer_s:,.0f} (same token count)")


def long_line(args: argparse.Namespace) -> None:
    from lmforge.data.shards import TextSpool, encode_spool
    from lmforge.data.tokenizer import LONG_RUN_CHARS, TokenizerOptions, save_tokenizer, train_tokenizer

    os.environ.setdefault("LMFORGE_QUIET", "1")
    docs = corpus(args.mb)
    letters = "".join(c for d in docs for c in d if c.isalpha())
    while len(letters.encode("utf-8")) < args.mb * 1e6:
        letters += letters
    line = letters.encode("utf-8")[: int(args.mb * 1e6)].decode("utf-8", "ignore")
    base_docs = docs[: len(docs) // max(1, round(args.mb / 2))]
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        tok = train_tokenizer(base_docs, TokenizerOptions(kind="bpe", vocab_size=args.vocab_size))
        path = save_tokenizer(tok, tmp_path / "tok")
        rows = []
        for name, texts in (("documents", docs), ("one line, no whitespace", [line])):
            spool = TextSpool(tmp_path / name)
            for d in texts:
                spool.add(d)
            spool.close()
            r = encode_spool(tmp_path / name, tmp_path / f"{name}-out", path, val_fraction=0.0,
                             workers=args.workers)
            mb = spool.num_bytes / 1e6
            rows.append((f"{name} ({r.workers} proc.)", mb, r.seconds, mb / r.seconds))
        train_s = None
        if not args.skip_training:
            t = time.perf_counter()
            train_tokenizer([line], TokenizerOptions(kind="bpe", vocab_size=args.vocab_size))
            train_s = time.perf_counter() - t
    print(f"\nencode, byte-level BPE vocab {args.vocab_size}, long runs cut every {LONG_RUN_CHARS} characters")
    print(f"{'':36s} {'MB':>7s} {'seconds':>8s} {'MB/s':>8s} {'vs docs':>8s}")
    for name, mb, s, rate in rows:
        print(f"{name:36s} {mb:7.1f} {s:8.2f} {rate:8.2f} {rate / rows[0][3]:7.0%}")
    if train_s is not None:
        print(f"tokenizer training on the line: {rows[1][1]:.1f} MB in {train_s:.2f} s "
              f"({rows[1][1] / train_s:.2f} MB/s)")


if __name__ == "__main__":
    main()
