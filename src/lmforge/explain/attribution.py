"""Token attributions: how much each input token's embedding pushed one prediction up or down.

Two methods on the input token embeddings, for anything written as `logits_fn(embeddings (B, T, C)) -> (B, C)`:

- integrated gradients (Sundararajan et al., 2017): (x - x') times the average gradient along the straight path
  from a baseline x' to the input x, a midpoint Riemann sum over `steps` points. Completeness: the attributions
  sum to f(x) - f(x') up to the sum's error, which shrinks as steps grow (`Attribution.delta` reports it).
- gradient x input: x times the gradient at x. One backward pass; a local, first-order view.

f is the target's log-probability by default (as Captum's LLM attribution), or its logit or probability. A
token's score is the sum of its attributions over the embedding dimensions.

`model_logits_fn` writes the checkpoints' models in that form: a decoder's next token, a BERT's next-sentence
head (any classifier head over the pooled output fits the same shape), a T5's first decoded token. Embeddings
reach the model through a forward hook on its token embedding, so the model code is unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer
from torch import Tensor, nn

from lmforge.data.tokenizer import special_token_ids
from lmforge.errors import UserError
from lmforge.explain.inputs import Encoded, decoder_start_id, piece_text
from lmforge.explain.page import Scale, render
from lmforge.models.config import ModelConfig
from lmforge.models.registry import CLASSIFY, EXTRACT_SPAN, SCORE, Kind, can, kind_of

LogitsFn = Callable[[Tensor], Tensor]  # embeddings (B, T, C) -> logits (B, C)
METHODS = ("ig", "grad_x_input")
OUTPUTS = ("log_prob", "logit", "prob")
BASELINES = ("zero", "pad")
NSP_CLASSES = {"next": 0, "random": 1}  # the masked_lm objective's labels: 0 = B follows A


@dataclass
class Attribution:
    method: str
    target: int
    attributions: Tensor  # (T, C) per embedding dimension
    f_input: float  # f(x): the attributed output at the input
    target_prob: float  # the target's probability at the input
    output: str = "log_prob"
    f_baseline: float | None = None  # integrated gradients only
    steps: int | None = None

    @property
    def scores(self) -> Tensor:
        """(T,) one score per token: its attributions summed over the embedding."""
        return self.attributions.sum(-1)

    @property
    def delta(self) -> float | None:
        """Completeness error of integrated gradients: sum of attributions - (f(x) - f(baseline))."""
        if self.f_baseline is None:
            return None
        return float(self.attributions.sum()) - (self.f_input - self.f_baseline)


def _objective(logits: Tensor, target: int, output: str) -> Tensor:
    if output == "logit":
        return logits[:, target].float()
    log_p = logits.float().log_softmax(-1)[:, target]
    return log_p if output == "log_prob" else log_p.exp()


def _check(inputs: Tensor, target: int, output: str) -> None:
    if inputs.dim() != 2:
        raise ValueError(f"inputs must be one example's embeddings (T, C), got shape {tuple(inputs.shape)}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")


@torch.no_grad()
def _evaluate(logits_fn: LogitsFn, x: Tensor, target: int, output: str) -> tuple[Tensor, Tensor]:
    """f and the target's probability at each row of x (N, T, C)."""
    logits = logits_fn(x)
    return _objective(logits, target, output), logits.float().softmax(-1)[:, target]


def integrated_gradients(logits_fn: LogitsFn, inputs: Tensor, target: int, *, baseline: Tensor | None = None,
                         steps: int = 32, batch_size: int = 16, output: str = "log_prob") -> Attribution:
    """Integrated gradients of class `target` w.r.t. `inputs` (T, C); baseline default: zero embeddings."""
    _check(inputs, target, output)
    if steps < 1:
        raise UserError(f"integrated gradients needs at least 1 step, got {steps}", fix="use e.g. --ig-steps 32")
    inputs = inputs.detach()
    baseline = torch.zeros_like(inputs) if baseline is None else baseline.detach().to(inputs)
    diff = inputs - baseline
    alphas = (torch.arange(steps, dtype=torch.float32, device=inputs.device) + 0.5) / steps  # midpoints
    total = torch.zeros_like(inputs, dtype=torch.float32)
    for chunk in alphas.split(batch_size):
        x = (baseline + chunk[:, None, None].to(inputs.dtype) * diff).requires_grad_(True)  # (b, T, C)
        with torch.enable_grad():
            f = _objective(logits_fn(x), target, output)
            (grad,) = torch.autograd.grad(f.sum(), x)  # rows are independent: each gets its own gradient
        total += grad.float().sum(0)
    f, prob = _evaluate(logits_fn, torch.stack([inputs, baseline]), target, output)
    return Attribution("ig", target, diff.float() * total / steps, float(f[0]), float(prob[0]), output,
                       f_baseline=float(f[1]), steps=steps)


def gradient_x_input(logits_fn: LogitsFn, inputs: Tensor, target: int, *, output: str = "log_prob") -> Attribution:
    """Gradient x input of class `target` w.r.t. `inputs` (T, C)."""
    _check(inputs, target, output)
    x = inputs.detach()[None].clone().requires_grad_(True)
    with torch.enable_grad():
        logits = logits_fn(x)
        f = _objective(logits, target, output)
        (grad,) = torch.autograd.grad(f.sum(), x)
    prob = logits.detach().float().softmax(-1)[0, target]
    return Attribution("grad_x_input", target, (x.detach() * grad).float()[0], float(f.detach()[0]), float(prob),
                       output)


# --- the checkpoints' models as logits_fn ----------------------------------------------------------------------

@contextlib.contextmanager
def substitute_embeddings(embedding: nn.Embedding, ids: Tensor, values: Tensor) -> Iterator[None]:
    """While active, `embedding(ids)` returns `values` instead, for that very `ids` tensor only.

    Matching the tensor object (not its contents) leaves every other lookup alone: a T5 embeds its decoder
    inputs with the same table, and those must stay real.
    """
    def hook(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
        return values if args[0] is ids else None

    handle = embedding.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def token_table(model: nn.Module) -> nn.Embedding:
    """The model's token embedding: `embed.tok` in the Transformers, `tok` in the LSTM."""
    return model.embed.tok if hasattr(model, "embed") else model.tok


def model_logits_fn(model: nn.Module, enc: Encoded, *, decoder_start: int = 0) -> tuple[LogitsFn, Tensor]:
    """(logits_fn, the text's token embeddings (T, C)) for a checkpoint's model.

    A next-token model (decoder, LSTM): the next-token logits after the text (B, V). An encoder's pretraining
    heads: the next-sentence head (B, 2), the pooled [CLS] output through a linear layer, as any sentence
    classifier. An encoder-decoder: the first decoded token's logits (B, V), the decoder starting from
    `decoder_start`. A sequence classifier (any kind with a classify head): its class logits (B, K).
    """
    cfg, kind = model.cfg, kind_of(model.cfg)
    if can(cfg, EXTRACT_SPAN):
        raise UserError("attribution of a span (QA) head is not supported yet",
                        fix="explain --what attention works for it; attribute a classifier or a language model")
    device = next(model.parameters()).device
    ids = enc.tensor(device)
    types = enc.types_tensor(device)
    table = token_table(model)

    def logits_fn(e: Tensor) -> Tensor:
        B = e.shape[0]
        ids_b = ids.expand(B, -1)
        with substitute_embeddings(table, ids_b, e):
            token_types = {} if kind != Kind.ENCODER else {
                "token_types": None if types is None else types.expand(B, -1)}
            if can(cfg, CLASSIFY):  # a sequence classifier: its class logits (B, K)
                return model(ids_b, **token_types)
            if can(cfg, SCORE):
                return model(ids_b)[:, -1]
            if kind == Kind.ENCODER:
                return model.nsp_logits(model(ids_b, **token_types))
            start = torch.full((B, 1), decoder_start, dtype=torch.long, device=device)
            return model.decode(start, model.encode(ids_b))[:, -1]

    with torch.no_grad():
        inputs = table(ids)[0].detach()
    return logits_fn, inputs


def make_baseline(model: nn.Module, enc: Encoded, inputs: Tensor, kind: str, pad_id: int) -> Tensor:
    """Zero or pad-token embeddings at the text's tokens; added tokens (<eos>, <cls>, <sep>) keep their own, so
    they get no attribution and the question stays "what did the text contribute"."""
    if kind not in BASELINES:
        raise UserError(f"unknown baseline {kind!r}", fix=f"choose one of {', '.join(BASELINES)}")
    if kind == "zero":
        base = torch.zeros_like(inputs)
    else:
        with torch.no_grad():
            base = token_table(model).weight[pad_id].detach().expand_as(inputs).clone()
    added = torch.tensor(enc.added, device=inputs.device)[:, None]
    return torch.where(added, inputs, base)


def resolve_target(target: str | None, tokenizer: Tokenizer, cfg: ModelConfig) -> int | None:
    """The output index a --target names: a token (decoders, T5), a class index or next/random (BERT's NSP), a
    label name or index (a sequence classifier)."""
    if target is None:
        return None
    if cfg.labels:
        if target in cfg.labels:
            return cfg.labels.index(target)
        if target.isdigit() and int(target) < len(cfg.labels):
            return int(target)
        raise UserError(f"target {target!r} is not a label of this classifier",
                        fix=f"give one of {', '.join(map(repr, cfg.labels))} (or its index)")
    if kind_of(cfg) == Kind.ENCODER:  # the next-sentence head's two classes
        t = target.strip().lower()
        index = NSP_CLASSES.get(t, int(t) if t.isdigit() else None)
        if index is None or not 0 <= index < 2:
            raise UserError(f"target {target!r} is not a class of the next-sentence head",
                            fix="use 0 or next (the text's second half follows the first), 1 or random")
        return index
    ids = tokenizer.encode(target, add_special_tokens=False).ids
    if len(ids) == 1:
        return ids[0]
    exact = tokenizer.token_to_id(target)  # a vocabulary spelling, e.g. "Ġcat" or "<eos>"
    if exact is not None:
        return exact
    if not ids:
        raise UserError("the target is empty", fix="give one token, e.g. --target ' mat'")
    pieces = [tokenizer.id_to_token(i) for i in ids]
    raise UserError(f"target {target!r} is {len(ids)} tokens ({' '.join(pieces)}), not one",
                    fix=f"give a single token, e.g. --target {piece_text(tokenizer, ids[0])!r} "
                        f"(mind the leading space), or its vocabulary spelling such as {pieces[0]!r}")


def attribute(model: nn.Module, tokenizer: Tokenizer, enc: Encoded, *, method: str = "ig",
              target: str | int | None = None, steps: int = 32, baseline: str = "zero",
              output: str = "log_prob") -> Attribution:
    """Attribute a checkpoint model's prediction on `enc` to its input tokens (see `model_logits_fn`).

    `target`: a class index, or text resolved by `resolve_target`; default the model's top prediction.
    """
    if method not in METHODS:
        raise UserError(f"unknown attribution method {method!r}", fix=f"choose one of {', '.join(METHODS)}")
    specials = special_token_ids(tokenizer)
    logits_fn, inputs = model_logits_fn(model, enc, decoder_start=decoder_start_id(tokenizer))
    with torch.no_grad():
        logits = logits_fn(inputs[None])[0]
    if isinstance(target, str):
        target = resolve_target(target, tokenizer, model.cfg)
    if target is None:
        target = int(logits.argmax())
    if not 0 <= target < logits.shape[-1]:
        raise UserError(f"target {target} is out of range: the model has {logits.shape[-1]} outputs")
    # cuDNN's LSTM has no backward in eval mode; the native kernel does (and gives the same numbers).
    recurrent = kind_of(model.cfg) == Kind.RECURRENT
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if recurrent else contextlib.nullcontext()
    with no_cudnn:
        if method == "grad_x_input":
            return gradient_x_input(logits_fn, inputs, target, output=output)
        base = make_baseline(model, enc, inputs, baseline, specials.get("pad", 0))
        return integrated_gradients(logits_fn, inputs, target, baseline=base, steps=steps, output=output)


def target_label(a: Attribution, tokenizer: Tokenizer, cfg: ModelConfig) -> str:
    if cfg.labels:
        return repr(cfg.labels[a.target])
    if kind_of(cfg) == Kind.ENCODER:
        return {0: "next sentence (0)", 1: "random sentence (1)"}.get(a.target, f"class {a.target}")
    return repr(piece_text(tokenizer, a.target))


def attribution_page(a: Attribution, enc: Encoded, label: str, *, baseline: str | None = None) -> str:
    """The HTML page: tokens tinted red (pushed the target up) or blue (pushed it down)."""
    scores = [None if enc.added[i] else float(s) for i, s in enumerate(a.scores)]
    hovers = [f"{enc.shown(i)!r} (id {enc.ids[i]}): " + ("added by the model's framing" if s is None
                                                          else f"attribution {s:+.4g}")
              for i, s in enumerate(scores)]
    method = {"ig": f"integrated gradients, {a.steps} steps, {baseline or 'zero'} baseline",
              "grad_x_input": "gradient x input"}[a.method]
    summary = [("prediction explained", label), ("probability at the input", f"{a.target_prob:.4g}"),
               ("method", method), (f"f = target {a.output.replace('_', ' ')}", f"{a.f_input:.4g}"),
               ("sum of attributions", f"{float(a.attributions.sum()):.4g}")]
    if a.f_baseline is not None:
        summary += [("f(x) - f(baseline)", f"{a.f_input - a.f_baseline:.4g}"),
                    ("completeness error", f"{a.delta:+.2e} (shrinks with more steps)")]
    vmax = max((abs(s) for s in scores if s is not None), default=1.0) or 1.0
    return render(f"Attribution: {label}", enc, scores, hovers,
                  Scale(vmax=vmax, diverging=True, label="attribution"), summary=summary,
                  note="Red tokens raised the prediction, blue ones lowered it; a token's score is its attribution "
                       "summed over the embedding dimensions. Hover for the exact value.")


def attribution_json(a: Attribution, enc: Encoded, label: str, *, baseline: str | None = None) -> dict:
    return {
        "method": a.method, "steps": a.steps, "baseline": baseline if a.method == "ig" else None,
        "output": a.output, "target": {"id": a.target, "label": label, "prob": a.target_prob},
        "f_input": a.f_input, "f_baseline": a.f_baseline, "sum": float(a.attributions.sum()), "delta": a.delta,
        "tokens": [{"index": i, "id": enc.ids[i], "text": enc.shown(i), "added": enc.added[i],
                    "score": float(s)} for i, s in enumerate(a.scores)],
    }
