"""Streaming text: incremental detokenisation, held-back UTF-8 and stop strings."""

from __future__ import annotations

import torch

from lmforge.infer.text import TextStream


def test_text_stream_holds_back_incomplete_utf8_and_a_possible_stop(byte_tokenizer):
    ids = byte_tokenizer.encode("ab é cd").ids
    stream = TextStream(byte_tokenizer, ("cd!",))
    pieces = [stream.add(t) for t in ids]
    assert "".join(pieces) == "ab é "  # "cd" could still become "cd!"
    assert all("\ufffd" not in p for p in pieces)
    assert stream.finish() == "cd"
    stop = TextStream(byte_tokenizer, (" é",))
    assert "".join(stop.add(t) for t in ids) + stop.finish() == "ab" and stop.stopped


def test_streamed_text_is_the_decoded_text_for_any_token_sequence(byte_tokenizer):
    """Incremental detokenisation over windows gives what decoding the whole output gives (random ids, many of
    them bytes of multi-byte characters cut anywhere)."""
    rng = torch.Generator().manual_seed(0)
    V = byte_tokenizer.get_vocab_size()
    for _ in range(200):
        ids = torch.randint(2, V, (int(torch.randint(1, 30, (1,), generator=rng)),), generator=rng).tolist()
        stream = TextStream(byte_tokenizer, ())
        text = "".join(stream.add(t) for t in ids) + stream.finish()
        assert text == byte_tokenizer.decode(ids, skip_special_tokens=True)
