"""Data: reading corpora, cleaning, tokenizer training and token shards (`lmforge prepare`)."""
