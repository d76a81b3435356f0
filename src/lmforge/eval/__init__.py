"""Evaluation: perplexity and bits per byte, model comparisons, retrieval and task metrics."""
