"""Compression applied to a built model from outside it: weight-only quantisation (`quantize`) and pruning
(`prune`). Below the checkpoint loader, which reads quantised checkpoints back; above `models` only."""
