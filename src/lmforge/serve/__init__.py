"""OpenAI-compatible HTTP serving of a checkpoint on the continuous-batching engine (`lmforge serve`).

`app.create_app` builds the ASGI app (routes over `lmforge.infer.engine`), `server.serve` runs it on uvicorn.
Imports infer, eval (embeddings), data (tokenizer, chat template), models and checkpoints; never train.
"""
