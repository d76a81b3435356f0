"""Recipes: workflows that orchestrate several layers (data, training, evaluation, inference), above all of them.

- `quickstart`: the built-in corpus -> a tokenizer -> a small GPT -> perplexity against n-gram baselines -> samples.
- `compare`: n-gram vs LSTM vs Transformer on one split of prepared data (training the models it is not given).
"""
