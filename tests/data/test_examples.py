"""Lists of examples: the pairs file reader, the held-out split, the epoch sampler and padding."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.data.examples import BadRows, EpochSampler, held_out, pad, read_pairs
from lmforge.errors import UserError


def test_reads_tsv_and_jsonl_pairs_with_named_columns(tmp_path):
    pairs = [("a cat", "eine Katze"), ("two dogs", "zwei Hunde")]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("id\ten\tde\n" + "".join(f"{i}\t{s}\t{t}\n" for i, (s, t) in enumerate(pairs)) + "\n")
    assert read_pairs(tsv, "en", "de") == pairs
    jsonl = tmp_path / "p.jsonl.gz"
    with gzip.open(jsonl, "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps({"source": s, "target": t, "extra": 1}) + "\n" for s, t in pairs))
    assert read_pairs(jsonl) == pairs


def test_reads_csv_pairs_with_quoted_commas_and_newlines_and_named_columns(tmp_path):
    csv_file = tmp_path / "p.csv"
    csv_file.write_text(',id,article,highlights\r\n0,a1,"Paris, France.\nIt rained.","Rain in ""Paris"""\r\n'
                        '1,a2,plain,short\r\n\r\n', encoding="utf-8")
    assert read_pairs(csv_file, "article", "highlights") == [("Paris, France.\nIt rained.", 'Rain in "Paris"'),
                                                             ("plain", "short")]
    assert read_pairs(csv_file, "", "id")[1] == ("1", "a2")  # a header name may be empty (pandas' index column)


def test_reads_the_cnn_dailymail_sample_csv():
    sample = Path(__file__).parents[3] / "shared/data/cnn_dailymail/sample100.csv"
    if not sample.is_file():
        pytest.skip(f"no {sample}")
    pairs = read_pairs(sample, "article", "highlights")
    assert len(pairs) == 100 and all("\n" in target for _, target in pairs[:5])


def test_bad_rows_are_one_line_naming_the_skip_option_or_skipped_and_counted(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('source,target\na,b\n"  ",c\nd,\ne,f\n', encoding="utf-8")
    with pytest.raises(UserError, match="line 3: the source and target must both be non-empty text.*"
                                        "pass --skip-bad-rows to skip"):
        read_pairs(path, bad_rows=BadRows(path, flag="--skip-bad-rows"))
    with pytest.raises(UserError) as e:
        read_pairs(path)  # a reader that cannot skip names no option
    assert "skip" not in e.value.line()
    bad = BadRows(path, skip=True, flag="--skip-bad-rows")
    assert read_pairs(path, bad_rows=bad) == [("a", "b"), ("e", "f")]
    assert bad.skipped == 2 and bad.summary() == f"skipped 2 row(s) of {path}: 2 empty"


def test_too_long_texts_are_one_line_or_skipped_and_counted(tmp_path):
    from lmforge.data.examples import encode_texts, kept_rows

    class Tokenizer:  # one token per word
        def encode_batch(self, texts, add_special_tokens=False):
            return [type("Encoding", (), {"ids": list(range(len(t.split())))})() for t in texts]

    texts = ["one two", "one two three four", "one"]
    frame = ([7], [8])
    with pytest.raises(UserError, match="example 2 has 6 tokens with 7 8, more than model.max_seq_len 5"):
        encode_texts(Tokenizer(), texts, frame, {}, limit=5, truncate=False, where="f.csv", fix="truncate")
    bad = BadRows("f.csv", skip=True, flag="--skip-bad-rows")
    ids = encode_texts(Tokenizer(), texts, frame, {}, limit=5, truncate=False, where="f.csv", fix="x", bad_rows=bad)
    assert kept_rows(texts, ids) == (["one two", "one"], [[7, 0, 1, 8], [7, 0, 8]])
    assert bad.summary() == "skipped 1 row(s) of f.csv: 1 longer than the context"


@pytest.mark.parametrize(("name", "text", "message"), [
    ("p.tsv", "en\tde\na\tb\n", "the TSV header has no column 'source', 'target' (it has: 'en', 'de')"),
    ("p.tsv", "source\ttarget\na\tb\tc\n", "line 2 has 3 tab-separated fields, the header 2"),
    ("p.tsv", "source\ttarget\na\t \n", "line 2: the source and target must both be non-empty text"),
    ("p.jsonl", '{"source": "a", "target": "b"}\n{"source": "a"\n', "line 2 is not valid JSON"),
    ("p.jsonl", '{"source": "a", "tgt": "b"}\n', "line 1 lacks the key(s) 'source' and 'target'"),
    ("p.txt", "source,target\na,b\n", "pairs file must be .tsv or .csv (with a header row) or .jsonl"),
    ("p.csv", "en,de\na,b\n", "the CSV header has no column 'source', 'target' (it has: 'en', 'de')"),
    ("p.csv", "source,target\na,b,c\n", "line 2 has 3 comma-separated fields, the header 2"),
    ("p.csv", 'source,target\n"a,b\n', "malformed CSV at line 2"),
    ("p.csv", "source,target\na,\n", "line 2: the source and target must both be non-empty text"),
    ("p.tsv", "source\ttarget\n", "pairs file holds no pairs"),
])
def test_bad_pairs_files_are_one_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match="^") as e:
        read_pairs(path)
    assert message in e.value.line() and str(path) in e.value.line()


def test_held_out_pairs_are_fixed_by_index():
    val = held_out(10_000, 0.1)
    assert val.mean() == pytest.approx(0.1, abs=0.01)
    assert (held_out(10_000, 0.1) == val).all() and (held_out(20_000, 0.1)[:10_000] == val).all()


def test_epoch_sampler_covers_every_example_once_per_epoch_and_resumes():
    s = EpochSampler(n=10, batch_size=4, seed=3)
    it = iter(s)
    epoch = [next(it) for _ in range(3)]  # 4 + 4 + 2
    assert [len(b) for b in epoch] == [4, 4, 2] and sorted(np.concatenate(epoch).tolist()) == list(range(10))
    state = s.state_dict()
    expected = [next(it).tolist() for _ in range(4)]
    again = EpochSampler(n=10, batch_size=4, seed=3)
    again.load_state_dict(state)
    it2 = iter(again)
    assert [next(it2).tolist() for _ in range(4)] == expected
    assert expected[0] != epoch[0].tolist()  # a new order each epoch
    ranks = [np.concatenate([next(iter(EpochSampler(10, 10, seed=3, rank=r, world_size=2)))]) for r in (0, 1)]
    assert sorted(np.concatenate(ranks).tolist()) == list(range(10))  # ranks split an epoch


def test_jsonl_labels_may_be_numbers_or_booleans(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a cat", "label": 1}\n{"text": "a tree", "label": 0}\n{"text": "ok", "label": true}\n')
    assert read_pairs(path, "text", "label") == [("a cat", "1"), ("a tree", "0"), ("ok", "true")]


def test_pad_right_pads_with_a_mask_and_an_optional_fill():
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    labels, _ = pad([[1, 2, 3], [4]], pad_id=0, value=-100)
    assert labels.tolist() == [[1, 2, 3], [4, -100, -100]]


def test_epoch_sampler_buckets_by_length_covers_every_example_and_resumes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=103)
    plain = EpochSampler(n=103, batch_size=8, seed=1)
    s = EpochSampler(n=103, batch_size=8, seed=1, lengths=lengths, bucket_batches=4)
    it, it_plain = iter(s), iter(plain)
    epoch = [next(it) for _ in range(13)]  # 12 x 8 + 7
    assert [len(b) for b in epoch] == [8] * 12 + [7]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(103))

    def spread(batches: list[np.ndarray]) -> float:  # mean (longest - shortest) in a batch
        return float(np.mean([np.ptp(lengths[b]) for b in batches]))

    assert spread(epoch[:12]) < 0.5 * spread([next(it_plain) for _ in range(12)])
    starts = [int(lengths[b].min()) for b in epoch[:12]]
    assert starts != sorted(starts)  # the batches are shuffled, not served shortest first
    state = s.state_dict()
    expected = [next(it).tolist() for _ in range(5)]
    again = EpochSampler(n=103, batch_size=8, seed=1, lengths=lengths, bucket_batches=4)
    again.load_state_dict(state)
    it2 = iter(again)
    assert [next(it2).tolist() for _ in range(5)] == expected


def test_bucketed_epoch_sampler_splits_each_global_batch_across_ranks():
    lengths = np.arange(40) % 7
    ranks = [EpochSampler(40, 4, seed=2, rank=r, world_size=2, lengths=lengths, bucket_batches=5) for r in (0, 1)]
    first = [[next(it) for _ in range(5)] for it in map(iter, ranks)]
    assert sorted(np.concatenate(first[0] + first[1]).tolist()) == list(range(40))
    for a, b in zip(*first, strict=True):  # the two halves of one global batch have similar lengths
        assert abs(np.mean(lengths[a]) - np.mean(lengths[b])) <= 1.5
