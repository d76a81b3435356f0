"""Tokenizers: train, save and load them as a Hugging Face `tokenizer.json`.

Four kinds, all built on the `tokenizers` library so that the file lmforge writes is the file `transformers`
reads (`AutoTokenizer.from_pretrained(dir)` works on the directory `save_tokenizer` writes):

- bpe: byte-level BPE as in GPT-2. The 256 byte symbols are always in the vocabulary, so any string, in any
  script, encodes without <unk> and decodes back to exactly itself.
- wordpiece: BERT-style (cased): BERT normalizer and pre-tokenizer, `##` continuation pieces,
  `<cls> text <sep>` added around a sequence when those special tokens exist.
- unigram: SentencePiece-style unigram language model over `▁`-marked words.
- char: one token per character seen in training (sorted), plus special tokens; unseen characters become
  <unk>. Stored as a BPE model without merges, so it is still a plain `tokenizer.json`.

Special tokens come first in the vocabulary, in the order given (by default <pad>=0, <unk>=1, <bos>=2,
<eos>=3, <mask>=4, <sep>=5, <cls>=6).

Long runs of text without whitespace (a minified file, a base64 blob, a DNA sequence on one line) are cut into
pieces of LONG_RUN_CHARS characters before the tokenizer sees them, in training and in every encode
(`split_long_runs`, used by `train_tokenizer`, `encode_ids` and the shard encoder): BPE training over one
"word" of n characters costs about n x merges (a 200 KB line took 11 s, a 1 MB one over 100 s), pieces keep it
linear. Text without such a run is encoded exactly as `Tokenizer.encode` would; inside a longer run the tokens
may differ from it at the cuts, every LONG_RUN_CHARS characters, and nowhere else.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.atomic import write_json, write_text
from lmforge.config import Config, field
from lmforge.errors import UserError
from lmforge.progress import progress_bar

KINDS = ("bpe", "wordpiece", "unigram", "char")
SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<pad>", "unk": "<unk>", "bos": "<bos>", "eos": "<eos>", "mask": "<mask>", "sep": "<sep>", "cls": "<cls>",
}
# How other tokenizers spell the same roles, so a reused tokenizer.json (GPT-2's, a BERT's) is understood too.
_ALIASES: dict[str, tuple[str, ...]] = {
    "pad": ("<pad>", "[PAD]", "<|pad|>"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "bos": ("<bos>", "<s>", "<|begin_of_text|>", "<|startoftext|>"),
    "eos": ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>"),
    "mask": ("<mask>", "[MASK]"),
    "sep": ("<sep>", "[SEP]"),
    "cls": ("<cls>", "[CLS]"),
}
BYTE_ALPHABET = 256
TOKENIZER_FILE = "tokenizer.json"

LONG_RUN_CHARS = 1000  # runs of more characters than this without whitespace are cut every this many
# A run that long, matched only from its first character (the look-behind), so the scan stays linear.
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{LONG_RUN_CHARS + 1},}}")


@dataclass
class TokenizerOptions(Config):
    """Which tokenizer to train."""

    kind: str = field("bpe", "bpe (byte-level, GPT-2 style; never produces <unk>), wordpiece (BERT style), "
                             "unigram (SentencePiece style) or char (one token per character)", choices=KINDS)
    vocab_size: int = field(8192, "largest vocabulary, special tokens included (char: an upper bound; the "
                                  "vocabulary is the characters seen)", min=1)
    min_frequency: int = field(2, "bpe/wordpiece: a pair must occur this often to be merged", min=1)
    special_tokens: list[str] = field(default_factory=lambda: list(SPECIAL_TOKENS),
                                      help=f"special tokens, in id order, from {', '.join(SPECIAL_TOKENS)} "
                                           f"(written <pad>, <unk>, ...)")

    def __post_init__(self) -> None:
        unknown = [n for n in self.special_tokens if n not in SPECIAL_TOKENS]
        if unknown:
            raise UserError(f"unknown special token name(s) {', '.join(map(repr, unknown))}",
                            fix=f"choose from {', '.join(SPECIAL_TOKENS)}")
        if len(set(self.special_tokens)) != len(self.special_tokens):
            raise UserError("special_tokens lists a token twice")
        if self.kind != "bpe" and "unk" not in self.special_tokens:
            # Only byte-level BPE can spell every input; the others need <unk> for what they never saw.
            raise UserError(f"a {self.kind} tokenizer needs the unk special token",
                            fix="add unk to special_tokens, or use kind bpe")


def _too_small(opts: TokenizerOptions, alphabet: int, what: str) -> UserError:
    need = alphabet + len(opts.special_tokens)
    return UserError(f"vocab_size {opts.vocab_size} is smaller than the {what} plus "
                     f"{len(opts.special_tokens)} special tokens ({need})",
                     fix=f"set tokenizer.vocab_size to at least {need}")


def check_vocab_size(opts: TokenizerOptions) -> None:
    """Fail before reading any data when the vocabulary cannot even hold the fixed alphabet."""
    if opts.kind == "bpe" and opts.vocab_size < BYTE_ALPHABET + len(opts.special_tokens):
        raise _too_small(opts, BYTE_ALPHABET, f"byte alphabet ({BYTE_ALPHABET})")
    if opts.vocab_size <= len(opts.special_tokens):
        raise _too_small(opts, 1, "alphabet (at least 1 character)")


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def split_long_runs(text: str) -> list[str]:
    """`text` as the pieces to encode one after another: cut after every LONG_RUN_CHARS characters of each run
    of more than LONG_RUN_CHARS characters without whitespace. Most texts are one piece, `[text]`."""
    if len(text) <= LONG_RUN_CHARS:
        return [text]
    pieces: list[str] = []
    start = 0
    for m in _LONG_RUN.finditer(text):
        for cut in range(m.start() + LONG_RUN_CHARS, m.end(), LONG_RUN_CHARS):
            pieces.append(text[start:cut])
            start = cut
    pieces.append(text[start:])
    return pieces


def encode_ids(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` without added special tokens: `tok.encode(text, add_special_tokens=False).ids`, with
    long runs without whitespace cut first (`split_long_runs`), as in training and in `lmforge prepare`."""
    pieces = split_long_runs(text)
    if len(pieces) == 1:
        return tok.encode(text, add_special_tokens=False).ids
    return [i for e in tok.encode_batch(pieces, add_special_tokens=False) for i in e.ids]


def encode_with_offsets(tok: Tokenizer, text: str) -> tuple[list[int], list[str], list[tuple[int, int]]]:
    """(ids, token strings, character spans in `text`) without added special tokens, cut as `encode_ids` cuts,
    with each piece's spans shifted to where the piece starts in `text`."""
    ids: list[int] = []
    tokens: list[str] = []
    spans: list[tuple[int, int]] = []
    start = 0
    for piece in split_long_runs(text):
        enc = tok.encode(piece, add_special_tokens=False)
        ids += enc.ids
        tokens += enc.tokens
        spans += [(start + a, start + b) for a, b in enc.offsets]
        start += len(piece)
    return ids, tokens, spans


def _new_tokenizer(opts: TokenizerOptions) -> tuple[Tokenizer, trainers.Trainer | None]:
    specials = [SPECIAL_TOKENS[n] for n in opts.special_tokens]
    unk = SPECIAL_TOKENS["unk"] if "unk" in opts.special_tokens else None
    if opts.kind == "bpe":
        tok = Tokenizer(models.BPE())
        # add_prefix_space=False keeps decode(encode(s)) == s; use_regex splits words the GPT-2 way.
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=opts.vocab_size, min_frequency=opts.min_frequency,
                                      special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    elif opts.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=False, lowercase=False)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        if "cls" in opts.special_tokens and "sep" in opts.special_tokens:
            cls, sep = SPECIAL_TOKENS["cls"], SPECIAL_TOKENS["sep"]
            ids = {t: specials.index(t) for t in (cls, sep)}
            tok.post_processor = processors.TemplateProcessing(
                single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
                special_tokens=list(ids.items()))
        trainer = trainers.WordPieceTrainer(vocab_size=opts.vocab_size, min_frequency=opts.min_frequency,
                                            special_tokens=specials, show_progress=False,
                                            continuing_subword_prefix="##")
    elif opts.kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=opts.vocab_size, special_tokens=specials, unk_token=unk,
                                          show_progress=False)
    else:  # char: built from the characters seen, no trainer
        tok, trainer = Tokenizer(models.BPE()), None
    return tok, trainer


def _char_tokenizer(chars: set[str], opts: TokenizerOptions) -> Tokenizer:
    specials = [SPECIAL_TOKENS[n] for n in opts.special_tokens]
    vocab = {t: i for i, t in enumerate(specials)}
    for c in sorted(chars):  # sorted by code point: the same corpus gives the same ids, as in char-rnn
        vocab.setdefault(c, len(vocab))
    # No pre-tokenizer: the whole text is one "word" that BPE splits into characters and never merges.
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=SPECIAL_TOKENS["unk"]))
    tok.decoder = decoders.Fuse()  # join characters with nothing between them
    return tok


def train_tokenizer(texts: Iterable[str], opts: TokenizerOptions, *, total_bytes: int | None = None,
                    description: str | None = None) -> Tokenizer:
    """Train a tokenizer on a stream of documents (read once; the library keeps only word counts)."""
    check_vocab_size(opts)
    tok, trainer = _new_tokenizer(opts)
    seen: set[str] = set()  # distinct characters: the char vocabulary, and the alphabet named in errors
    count_chars = opts.kind != "bpe"
    fed = 0

    with progress_bar() as bar:
        task = bar.add_task(description or f"training {opts.kind} tokenizer", total=total_bytes, unit="bytes")

        def feed() -> Iterator[str]:
            nonlocal fed
            for text in texts:
                if count_chars:
                    seen.update(text)
                fed += 1
                bar.advance(task, _utf8_len(text))
                yield from split_long_runs(text)

        if trainer is None:
            for _ in feed():
                pass
        else:
            try:
                tok.train_from_iterator(feed(), trainer)
            except Exception as e:
                # The unigram trainer refuses a vocabulary that cannot hold every character it saw.
                if "not large enough to contain all chars" in str(e):
                    raise _too_small(opts, len(seen), f"{len(seen)} distinct characters seen") from None
                raise
        if total_bytes is not None:
            bar.update(task, completed=total_bytes)
    if fed == 0:
        raise UserError("no text to train the tokenizer on", fix="check that the corpus holds documents")
    if opts.kind == "char":
        if len(seen) + len(opts.special_tokens) > opts.vocab_size:
            raise _too_small(opts, len(seen), f"{len(seen)} distinct characters seen")
        tok = _char_tokenizer(seen, opts)
    elif tok.get_vocab_size() > opts.vocab_size:
        # WordPiece keeps every character (and its ## form) whatever the target; say so rather than overshoot.
        raise _too_small(opts, tok.get_vocab_size() - len(opts.special_tokens),
                         f"alphabet the trainer kept ({len(seen)} distinct characters seen)")
    tok.add_special_tokens([SPECIAL_TOKENS[n] for n in opts.special_tokens])
    return tok


def special_token_ids(tok: Tokenizer) -> dict[str, int]:
    """{"pad": 0, "eos": 3, ...} for the special tokens the tokenizer has (by lmforge's or common spellings)."""
    found: dict[str, int] = {}
    for name, spellings in _ALIASES.items():
        for s in spellings:
            i = tok.token_to_id(s)
            if i is not None:
                found[name] = i
                break
    return found


def decoder_start_id(special_ids: dict[str, int]) -> int:
    """The first decoder input of an encoder-decoder, in training, generation, explain and export alike.

    `<pad>` as in T5 (so an exported model's `decoder_start_token_id` is the one it was trained with), else `<bos>`,
    else `<eos>`. `special_ids` is `special_token_ids(tok)` or the same role -> id mapping.
    """
    for name in ("pad", "bos", "eos"):
        if name in special_ids:
            return special_ids[name]
    raise KeyError("no <pad>, <bos> or <eos> token to start the decoder with")


def check_vocab_fits(tokenizer_size: int, model_size: int, *, model: str = "the model's vocabulary",
                     where: str | Path | None = None, fix: str) -> None:
    """UserError when the tokenizer has ids the model has no embedding row for (they would index out of range)."""
    if tokenizer_size > model_size:
        raise UserError(f"the tokenizer has {tokenizer_size} tokens but {model} is {model_size}", where=where, fix=fix)


def _hf_special_tokens(tok: Tokenizer) -> dict[str, str]:
    """transformers' names for the special tokens present: {"eos_token": "<eos>", ...}."""
    return {f"{name}_token": tok.id_to_token(i) for name, i in special_token_ids(tok).items()}


def write_hf_configs(tok: Tokenizer, directory: str | Path) -> None:
    """tokenizer_config.json and special_tokens_map.json, so transformers knows which token is which."""
    directory = Path(directory)
    special = _hf_special_tokens(tok)
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        # Decode must give back the text exactly; transformers' default would drop spaces before punctuation.
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(1e30),  # transformers' value for "no limit"
        **special,
    })
    write_json(directory / "special_tokens_map.json", special)


def save_tokenizer(tok: Tokenizer, directory: str | Path) -> Path:
    """Write DIR/tokenizer.json (+ the two transformers config files) atomically; returns the tokenizer.json."""
    directory = Path(directory)
    path = directory / TOKENIZER_FILE
    write_text(path, tok.to_str(pretty=True))
    write_hf_configs(tok, directory)
    return path


def copy_tokenizer(source: str | Path, directory: str | Path) -> Path:
    """Copy a tokenizer.json byte for byte (its hash, and so dataset compatibility, is kept) plus configs."""
    src = tokenizer_file(source)
    tok = load_tokenizer(src)
    path = Path(directory) / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, path)
    write_hf_configs(tok, directory)
    return path


def tokenizer_file(path_or_dir: str | Path) -> Path:
    """The tokenizer.json a path names: the file itself, or DIR/tokenizer.json."""
    path = Path(path_or_dir)
    return path / TOKENIZER_FILE if path.is_dir() else path


def load_tokenizer(path_or_dir: str | Path) -> Tokenizer:
    """Load a tokenizer.json (or DIR/tokenizer.json); UserError when it is missing or not a tokenizer."""
    path = tokenizer_file(path_or_dir)
    if not path.is_file():
        raise UserError(f"no {TOKENIZER_FILE} here" if Path(path_or_dir).is_dir() else "tokenizer file not found",
                        where=path_or_dir,
                        fix="give the tokenizer.json written by `lmforge prepare`, or the directory holding it")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception with serde's message
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"not a valid tokenizer file ({msg})", where=path,
                        fix="re-create it with `lmforge prepare`, or point at a Hugging Face tokenizer.json") from None


def tokenizer_hash(path_or_dir: str | Path) -> str:
    """sha256 of the tokenizer.json bytes: shards record it, so data and tokenizer cannot silently diverge."""
    path = tokenizer_file(path_or_dir)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        raise UserError(f"cannot read tokenizer ({e.strerror or e})", where=path) from None


def tokenizer_kind(tok: Tokenizer) -> str:
    """Best guess of which of lmforge's kinds a tokenizer is (for reports), from its model and pre-tokenizer."""
    spec = json.loads(tok.to_str())
    model = (spec.get("model") or {}).get("type")
    if model == "BPE" and not spec["model"].get("merges") and spec.get("pre_tokenizer") is None:
        return "char"
    return {"BPE": "bpe", "WordPiece": "wordpiece", "Unigram": "unigram"}.get(model, str(model).lower())
