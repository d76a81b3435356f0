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
    args = parser.parse_args()

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


if __name__ == "__main__":
    main()
