"""Inference: sampling, KV-cached generation. Knows nothing of training."""
