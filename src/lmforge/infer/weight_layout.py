"""An inference weight layout for the CPU: linear layers that multiply by a transposed, contiguous weight copy.

At batch 1 a decoder's step is a chain of matrix-vector products, bound by how fast the weights stream from
memory. PyTorch's `F.linear(x, W)` with W stored (out, in) runs markedly slower on the CPU than `x @ Wt` with
Wt = W.t().contiguous() stored (in, out) (Hugging Face GPT-2's `Conv1D` keeps its weights that way and calls
addmm) for one or two rows, and as fast or faster from four rows on, where it switches to a matrix-matrix kernel.
Measured on the 2-core development CPU (torch 2.13, fp32, one thread, 2026-12-02, process time, machine shared):
the 25 linear layers of the `small` preset cache-cold, one row, 5.5 -> 3.9 ms; warm single layers, rows 1 / 2 / 4
/ 8: 1152 x 384 48 -> 35, 93 -> 70, 104 -> 89, 150 -> 150 us; 4096 x 384 247 -> 137, 482 -> 272, 467 -> 802,
839 -> 917 us; 4096 x 128 74 -> 42, 171 -> 90, 145 -> 158, 201 -> 228 us. So a swapped layer uses the copy for up
to `MAX_ROWS` rows and the layer's own weight above (decode of several sequences, prefill).

Applied from outside the model, as quantisation swaps its layers (`lmforge.compress.quantize`): `transpose_linears`
replaces every plain `nn.Linear` by a `TransposedLinear` that registers the *same* weight and bias parameters under
the same names (so `state_dict`, tying and `parameters()` are unchanged) plus the copy as a non-persistent buffer,
and returns a handle whose `restore()` puts the original layers back. The engine swaps when it starts on the CPU
and restores on `close()`, so a model being trained (training-time generation passes the live model) gets its own
layers back, and with grad enabled a swapped layer computes through its own weight anyway. The copies are kept per
layer while its weight is unchanged (same storage, same version counter), so engine after engine on one model
transposes once; a changed weight (an optimizer step) gets a fresh copy at the next swap. The price is memory:
the swapped layers' weights are held twice while their copies live. Quantised layers
(`Int8Linear`, `Int4Linear`) and LoRA layers are not `nn.Linear`: they are left as they are.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Up to this many rows (tokens x sequences) a swapped layer multiplies by its transposed copy: the decode step of
# one or two sequences. Above it the original (out, in) weight is as fast or faster (see the module docstring).
MAX_ROWS = 2
# Only layers of at least this many weights are swapped: the swapped forward's few extra Python operations (~3 us)
# cost more than the layout saves on a small matrix that sits in cache anyway (warm, one row, process time:
# 128 x 128 12.5 -> 16.5 us, 384 x 128 16.0 -> 19.0 us, 4096 x 128 92.7 -> 57.5 us). So in the `tiny` preset only
# the vocabulary projection is swapped, in `small` every layer.
MIN_WEIGHTS = 128 * 1024


class TransposedLinear(nn.Module):
    """`nn.Linear`'s function and parameters, plus `weight_t` (in, out) contiguous for small products."""

    def __init__(self, linear: nn.Linear, max_rows: int = MAX_ROWS) -> None:
        super().__init__()
        self.in_features, self.out_features, self.max_rows = linear.in_features, linear.out_features, max_rows
        self.weight = linear.weight  # the same Parameter: state_dict, tying and optimizers see no difference
        self.bias = linear.bias
        with torch.no_grad():
            self.register_buffer("weight_t", linear.weight.detach().t().contiguous(), persistent=False)
        self.stamp = _stamp(linear.weight)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        if rows > self.max_rows or torch.is_grad_enabled():  # gradients flow through the weight itself
            return F.linear(x, self.weight, self.bias)
        x2 = x.reshape(rows, self.in_features)
        y = torch.mm(x2, self.weight_t) if self.bias is None else torch.addmm(self.bias, x2, self.weight_t)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _stamp(weight: Tensor) -> tuple[int, int, torch.dtype, torch.device]:
    """What identifies a weight's current values: its storage and in-place version counter."""
    return weight.data_ptr(), weight._version, weight.dtype, weight.device


# Each nn.Linear's swapped form, reused while its weight is unchanged; dropped with the layer.
_SWAPPED: weakref.WeakKeyDictionary[nn.Linear, TransposedLinear] = weakref.WeakKeyDictionary()


@dataclass
class Swap:
    """The layers one `transpose_linears` call replaced: `restore()` puts them back (once)."""

    replaced: list[tuple[nn.Module, str, nn.Linear]] = field(default_factory=list)

    def restore(self) -> None:
        for parent, name, linear in self.replaced:
            setattr(parent, name, linear)
        self.replaced.clear()


def transpose_linears(model: nn.Module, max_rows: int = MAX_ROWS, min_weights: int = MIN_WEIGHTS) -> Swap:
    """Swap every plain `nn.Linear` of `model` with at least `min_weights` weights for a `TransposedLinear` (see
    the module docstring), in place."""
    swap = Swap()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # Subclasses and wrappers (LoRA, quantised layers) may compute otherwise: leave them.
            if type(child) is not nn.Linear or child.weight.numel() < min_weights:
                continue
            layer = _SWAPPED.get(child)
            if (layer is None or layer.weight is not child.weight or layer.bias is not child.bias
                    or layer.stamp != _stamp(child.weight) or layer.max_rows != max_rows):
                layer = _SWAPPED[child] = TransposedLinear(child, max_rows)
            setattr(parent, name, layer)
            swap.replaced.append((parent, name, child))
    return swap
