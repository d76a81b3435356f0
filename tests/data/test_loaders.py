from __future__ import annotations

import numpy as np
import pytest
import torch

from lmforge.data.loaders import DocumentLoader, RandomWindowLoader, SequentialLoader, TokenDataset
from lmforge.data.shards import TextSpool, encode_spool
from lmforge.data.tokenizer import TokenizerOptions, save_tokenizer, train_tokenizer
from lmforge.errors import UserError

DOCS = [f"document {i}: " + " ".join(f"word{(i * j) % 37}" for j in range(20 + i % 13)) for i in range(120)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("prepared")
    tok = train_tokenizer(iter(DOCS), TokenizerOptions(kind="char", vocab_size=64))
    save_tokenizer(tok, d)
    spool = TextSpool(d / "spool")
    for text in DOCS:
        spool.add(text)
    spool.close()
    # Tiny shards so that windows and documents cross shard boundaries.
    encode_spool(d / "spool", d, d / "tokenizer.json", val_fraction=0.2, seed=1, workers=1, shard_tokens=500)
    return d


def test_dataset_reads_documents_across_shards(data_dir):
    ds = TokenDataset.open(data_dir, "train")
    assert len(ds.shards) > 2 and ds.num_tokens == sum(len(s) for s in ds.shards)
    docs = [ds.document(i) for i in range(ds.num_documents)]
    assert all(d[-1] == ds.eos_id for d in docs) and sum(map(len, docs)) == ds.num_tokens
    assert np.array_equal(ds.window(0, ds.num_tokens), np.concatenate(docs))
    assert 0.9 < ds.bytes_per_token < 1.1  # char tokenizer on ASCII text (+ one <eos> per document)


def test_random_windows_shift_and_resume_exactly(data_dir):
    ds = TokenDataset.open(data_dir, "train")
    loader = RandomWindowLoader(ds, batch_size=4, seq_len=16, seed=3)
    x, y = next(loader)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    state = loader.state_dict()
    expected = [next(loader) for _ in range(3)]
    fresh = RandomWindowLoader(ds, batch_size=4, seq_len=16, seed=3)
    fresh.load_state_dict(state)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(expected, (next(fresh) for _ in range(3))))
    # Two ranks of batch 2 read the two halves of the single-process batch of 4: the same global batch.
    halves = [next(RandomWindowLoader(ds, batch_size=2, seq_len=16, seed=3, rank=r, world_size=2))[0] for r in (0, 1)]
    assert torch.equal(torch.cat(halves), x)


def test_sequential_pass_covers_split_once_and_partitions_ranks(data_dir):
    ds = TokenDataset.open(data_dir, "val")
    full = torch.cat([x for x, _ in SequentialLoader(ds, 3, 8)])
    stream = torch.from_numpy(ds.window(0, ds.num_tokens).astype(np.int64))
    assert torch.equal(full.flatten(), stream[: full.numel()]) and full.numel() > ds.num_tokens - 9
    ranks = [torch.cat([x for x, _ in SequentialLoader(ds, 3, 8, rank=r, world_size=2)]) for r in range(2)]
    assert sorted(map(tuple, torch.cat(ranks).tolist())) == sorted(map(tuple, full.tolist()))
    loader = SequentialLoader(ds, 2, 8)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    rest = [x for x, _ in it]
    again = SequentialLoader(ds, 2, 8)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, (b, _) in zip(rest, again))


def test_document_loader_resumes_and_splits_ranks(data_dir):
    ds = TokenDataset.open(data_dir, "train")
    loader = DocumentLoader(ds, seed=0)
    it = iter(loader)
    [next(it) for _ in range(ds.num_documents + 2)]  # into the second epoch
    state = loader.state_dict()
    expected = [next(it) for _ in range(5)]
    again = DocumentLoader(ds, seed=0)
    again.load_state_dict(state)
    assert all(np.array_equal(a, b) for a, b in zip(expected, iter(again)))
    one_pass = [list(DocumentLoader(ds, shuffle=False, rank=r, world_size=2, loop=False)) for r in range(2)]
    assert len(one_pass[0]) + len(one_pass[1]) == ds.num_documents


def test_truncated_shard_and_missing_split_are_clear_errors(data_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    with pytest.raises(UserError, match="no 'test' split"):
        TokenDataset.open(copy, "test")
    shard = copy / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(UserError, match="does not match the manifest"):
        TokenDataset.open(copy, "train")
