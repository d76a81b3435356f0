"""Lists of examples: the pairs file reader, the held-out split, the epoch sampler and padding."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from lmforge.data.examples import EpochSampler, held_out, pad, read_pairs
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


@pytest.mark.parametrize(("name", "text", "message"), [
    ("p.tsv", "en\tde\na\tb\n", "the TSV header has no column 'source', 'target' (it has: 'en', 'de')"),
    ("p.tsv", "source\ttarget\na\tb\tc\n", "line 2 has 3 tab-separated fields, the header 2"),
    ("p.tsv", "source\ttarget\na\t \n", "line 2: the source and target must both be non-empty text"),
    ("p.jsonl", '{"source": "a", "target": "b"}\n{"source": "a"\n', "line 2 is not valid JSON"),
    ("p.jsonl", '{"source": "a", "tgt": "b"}\n', "line 1 lacks the key(s) 'source' and 'target'"),
    ("p.csv", "source,target\na,b\n", "pairs file must be .tsv (with a header row) or .jsonl"),
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


def test_epoch_sampler_grouped_by_length_pads_less_and_still_covers_every_example_once():
    lengths = np.random.default_rng(0).integers(1, 60, size=1000)
    plain = EpochSampler(n=1000, batch_size=16, seed=1)
    grouped = EpochSampler(n=1000, batch_size=16, seed=1, lengths=lengths, group=10)
    it = iter(grouped)
    epoch = [next(it) for _ in range(63)]  # 62 batches of 16 + 8
    assert [len(b) for b in epoch] == [16] * 62 + [8]
    assert sorted(np.concatenate(epoch).tolist()) == list(range(1000))  # every example once per epoch

    def padded(batches):  # the tokens a batch costs: its size times its longest example
        return sum(len(b) * lengths[b].max() for b in batches)

    it_plain = iter(plain)
    assert padded(epoch) < 1.15 * lengths.sum() < 0.8 * padded([next(it_plain) for _ in range(63)])
    first = [b.tolist() for b in epoch[:3]]
    assert first != [b.tolist() for b in sorted(epoch[:-1], key=lambda b: -lengths[b].max())[:3]]  # shuffled
    state = grouped.state_dict()
    expected = [next(it).tolist() for _ in range(5)]
    again = EpochSampler(n=1000, batch_size=16, seed=1, lengths=lengths, group=10)
    again.load_state_dict(state)
    it2 = iter(again)
    assert [next(it2).tolist() for _ in range(5)] == expected  # exact resume


def test_jsonl_labels_may_be_numbers_or_booleans(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text('{"text": "a cat", "label": 1}\n{"text": "a tree", "label": 0}\n{"text": "ok", "label": true}\n')
    assert read_pairs(path, "text", "label") == [("a cat", "1"), ("a tree", "0"), ("ok", "true")]


def test_pad_right_pads_with_a_mask_and_an_optional_fill():
    ids, mask = pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[True] * 3, [True, False, False]]
    labels, _ = pad([[1, 2, 3], [4]], pad_id=0, value=-100)
    assert labels.tolist() == [[1, 2, 3], [4, -100, -100]]
