"""`lmforge prepare`: corpus -> cleaned documents -> tokenizer -> token shards (the library call is
`lmforge.data.prepare.prepare`)."""

from __future__ import annotations

import argparse

from lmforge.cli.common import add_verb
from lmforge.config import resolve
from lmforge.data.prepare import PrepareConfig

ORDER = 20

DESCRIPTION = """\
Prepare a corpus for training: read it (streaming), clean it (Unicode normalisation, whitespace, length filters,
exact and near-duplicate removal, PII scrubbing), train a tokenizer on it (or reuse one), encode it in parallel into
token shards split into train/val(/test) by document, and write a report.

OUT gets tokenizer.json (loadable by `tokenizers` and `transformers`), {train,val,test}-NNNNN.bin token shards
(raw uint16/uint32, nanoGPT's format) with .idx document boundaries, manifest.json (written last: a directory
without it is incomplete), report.json and config.yaml (the effective options).

inputs: files, directories (read recursively) or globs of .txt .md .jsonl .csv .tsv .parquet, any of them .gz;
or builtin:python-docs, Python's own documentation (present on every machine; the default), or
builtin:tinyshakespeare, Tiny Shakespeare (1.1 MB, shipped in the package).

examples:
  lmforge prepare                                                     # built-in corpus -> runs/data
  lmforge prepare ../shared/data/tinyshakespeare.txt --out runs/shakespeare --tokenizer.kind char  # as char-rnn
  lmforge prepare data/*.jsonl.gz --read.jsonl-field text --tokenizer.vocab-size 32000 --out runs/web
  lmforge prepare reviews.csv --read.csv-column review --clean.near-dedup --tokenizer.kind wordpiece
  lmforge prepare new_docs/ --tokenizer-from runs/data/tokenizer.json --out runs/more   # reuse a tokenizer
"""


def _main(args: argparse.Namespace) -> int:
    from lmforge.data.prepare import prepare

    positional = vars(args).pop("input_args", None)
    cfg = resolve(PrepareConfig, args, **({"inputs": positional} if positional else {}))
    result = prepare(cfg)
    print("\n".join(result.summary))
    print(f"next: lmforge train --data {result.out} --out runs/train")
    return 0


def register(sub) -> None:
    parser = add_verb(sub, "prepare", PrepareConfig, _main, help="clean a corpus, train a tokenizer, encode shards",
                      description=DESCRIPTION)
    parser.add_argument("input_args", nargs="*", metavar="INPUT",
                        help="corpus files, directories, globs, builtin:python-docs or builtin:tinyshakespeare "
                             "(default: builtin:python-docs)")
