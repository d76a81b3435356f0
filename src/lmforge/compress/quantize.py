"""Weight-only quantisation of a model's linear layers, applied from outside the model (gpt-fast's layer swap).

    from lmforge.compress.quantize import QuantizationSpec, quantize_model

    spec = quantize_model(model, QuantizationSpec(bits=8))           # int8, one scale per output channel
    spec = quantize_model(model, QuantizationSpec(bits=4, group_size=64))  # int4, a scale and offset per 64 inputs

Every `nn.Linear` of the model (except one whose weight is tied to the embedding, which stays shared) is replaced
by an `Int8Linear` or `Int4Linear` holding integer weights and their scales as buffers; the layer's output is in
the activations' dtype (the model's). The model code never knows: it calls
`self.wqkv(x)` as before. A quantised model saves as an ordinary checkpoint whose `quantization.json` records the
spec and the layers swapped; `lmforge.checkpoints.load_model` reads that file, swaps the same layers in (empty)
and loads the integer tensors, so a quantised checkpoint loads through the one loader like any other.

On a CPU, `forward` runs PyTorch's own weight-only kernels, the ones gpt-fast's CPU path calls:
`torch._weight_int8pack_mm` (int8 weight, bf16 activations, per-channel scale) and `torch._weight_int4pack_mm_for_cpu`
(its packed int4 layout, bf16 activations, a bf16 scale and zero per group). Both need bf16 activations (with fp32
ones the int8 op is several times slower than `F.linear`), so the activations are cast to bf16 for the matmul and
the output back to the input's dtype. They read the integer weight without materialising a float copy, which is
what makes them pay: measured on the 2-core development CPU (torch 2.13, 20 distinct GPT-2 124M-shaped weights,
cache-cold, 2026-12-02, load average about 1.5), per layer at batch 1, one thread: fp32 `F.linear` 614 µs, the
cast-then-matmul int8 507 µs, `_weight_int8pack_mm` 287 µs, the dequantise-then-matmul int4 2,049 µs,
`_weight_int4pack_mm_for_cpu` 132 µs; at 64 rows (a prefill) both kernels are within 10% of fp32 (docs/compression.md).
Elsewhere (CUDA, shapes the kernels refuse: an input width not a multiple of 8 for int8, an output width not a
multiple of 16 for int4), or when a gradient must flow through the layer, the plain cast / dequantise path runs.
The checkpoint format is the same for both: the int4 kernel's layout is packed from the stored nibbles on first
use and kept beside them (not saved).

Plain PyTorch rather than torchao: torchao 0.18's `Int8WeightOnlyConfig` installs against torch 2.13 CPU, but
its quantised weights are tensor subclasses that safetensors does not save (every lmforge checkpoint is
safetensors); calling the `aten` ops directly keeps the checkpoint format and adds no dependency.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmforge.errors import UserError
from lmforge.models.config import ModelConfig
from lmforge.models.heads import HEAD_MODULES
from lmforge.models.io import tied_names
from lmforge.models.registry import Kind, describe, kind_of

QUANTIZATION = "quantization.json"  # beside config.json in a quantised checkpoint
QUANTIZATION_FORMAT = "lmforge-quantization/1"
BITS = (8, 4)
GROUP_SIZES = (32, 64, 128, 256)  # int4 groups of input columns sharing a scale and an offset
# Kinds made of Transformer linear layers. An LSTM's weights live in nn.LSTM's fused gate matrices and the n-gram
# baseline holds counts: neither has linear layers worth quantising.
QUANTIZABLE_KINDS = (Kind.DECODER, Kind.ENCODER, Kind.ENCODER_DECODER)


@dataclass
class QuantizationSpec:
    bits: int = 8
    group_size: int | None = None  # int4 only (default 64)
    layers: list[str] = field(default_factory=list)  # module names swapped (filled by quantize_model)

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise UserError(f"--bits is {self.bits}, but weight-only quantisation is int8 or int4",
                            fix="pass --bits 8 or --bits 4")
        if self.bits == 8 and self.group_size is not None:
            raise UserError("--group-size applies to int4 (int8 has one scale per output channel)",
                            fix="drop --group-size, or pass --bits 4")
        if self.bits == 4:
            self.group_size = self.group_size or 64
            if self.group_size not in GROUP_SIZES:
                raise UserError(f"--group-size is {self.group_size}, but int4 groups are "
                                f"{', '.join(map(str, GROUP_SIZES))} input columns",
                                fix="pass --group-size 32, 64, 128 or 256")

    @property
    def name(self) -> str:
        return "int8" if self.bits == 8 else f"int4 (groups of {self.group_size})"


# --- the layers ----------------------------------------------------------------------------------------------

class _QuantizedLinear(nn.Module):
    """Shared by both widths: the bias (float, as the model had it) and a dtype check on load."""

    in_features: int
    out_features: int
    # Set on a head's layers (their outputs are logits): they keep the portable path, in the activations' dtype.
    # Logits rounded to bf16 flip greedy choices between near-tied tokens: on a llama trained 120 steps, greedy
    # tokens agreed with fp32 on 94% of positions with the kernel on the head and on 100% with it off (16 prompts).
    exact_output: bool = False

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args, **kwargs) -> None:
        for name, buffer in self._buffers.items():
            t = state_dict.get(prefix + name)
            if t is not None and buffer is not None and t.dtype != buffer.dtype:
                raise UserError(f"quantised tensor {prefix}{name} is {str(t.dtype).removeprefix('torch.')}, not "
                                f"{str(buffer.dtype).removeprefix('torch.')}: the weights do not match "
                                f"{QUANTIZATION}", fix="re-run `lmforge quantize` on the original checkpoint")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _with_bias_of(self, linear: nn.Linear) -> _QuantizedLinear:
        """This layer with `linear`'s bias copied in (the bias stays float)."""
        if linear.bias is not None:
            self.bias.data.copy_(linear.bias.detach())
        return self

    def _add_bias(self, y: Tensor) -> Tensor:
        return y if self.bias is None else y + self.bias

    def _kernel_applies(self, x: Tensor) -> bool:
        """Whether `forward` may take the CPU kernel: on a CPU, shapes the kernel takes, and no gradient to carry
        back to x (the kernels have no backward; the bias is added outside them, so its gradient still flows)."""
        needs_grad = torch.is_grad_enabled() and x.requires_grad
        return x.device.type == "cpu" and not needs_grad and not self.exact_output and self._kernel_shape_ok()

    def _kernel_shape_ok(self) -> bool:
        raise NotImplementedError  # each width's kernel has its own rule

    def kernel_matmul(self, x_bf16: Tensor) -> Tensor:
        raise NotImplementedError

    def dequantized_matmul(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self._kernel_applies(x):
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = self.kernel_matmul(flat).reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        else:
            y = self.dequantized_matmul(x)
        return self._add_bias(y)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantizedLinear):
    """y = (x @ q.T) * scale + b, with q int8 (out, in) and one scale per output channel (symmetric, absmax/127).

    The per-channel scale factors out of the matmul, so the weight is only cast, never rescaled, in `forward`.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.ones(out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, linear.weight.dtype,
                    linear.weight.device)
        layer.weight.copy_(q)
        layer.scales.copy_(scales)
        return layer._with_bias_of(linear)

    def dequantized(self) -> Tensor:
        return self.weight.to(self.scales.dtype) * self.scales[:, None]

    def dequantized_matmul(self, x: Tensor) -> Tensor:
        """The portable path: cast the int8 weight to x's dtype, multiply, scale each output channel."""
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)

    def _kernel_shape_ok(self) -> bool:
        return self.in_features % 8 == 0  # the CPU kernel crashes (not raises) on other input widths

    def kernel_matmul(self, x_bf16: Tensor) -> Tensor:
        """(M, in) bf16 -> (M, out) bf16 through `torch._weight_int8pack_mm` (gpt-fast's CPU int8 path)."""
        return torch._weight_int8pack_mm(x_bf16, self.weight, self.scales.to(torch.bfloat16))


class Int4Linear(_QuantizedLinear):
    """Group-wise asymmetric int4: each run of `group_size` input columns of a row has a scale and an offset,
    w ≈ q * scale + offset with q in 0..15; two values per byte (`packed` (out, in / 2), low nibble first)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("packed", torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, groups, dtype=dtype, device=device))
        self.register_buffer("offsets", torch.zeros(out_features, groups, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias else None
        # The CPU kernel's layout of the same weight, made on first use; not a buffer, so never saved.
        self._kernel_layout: tuple[tuple[int, ...], Tensor, Tensor] | None = None  # (made from, weight, scales)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        out_f, in_f = linear.weight.shape
        w = linear.weight.detach().float().reshape(out_f, in_f // group_size, group_size)
        lo, hi = w.amin(dim=2), w.amax(dim=2)
        scales = ((hi - lo) / 15).clamp(min=1e-12)
        q = torch.round((w - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.uint8).reshape(out_f, in_f)
        layer = cls(in_f, out_f, linear.bias is not None, group_size, linear.weight.dtype, linear.weight.device)
        layer.packed.copy_(q[:, 0::2] | (q[:, 1::2] << 4))
        layer.scales.copy_(scales)
        layer.offsets.copy_(lo)
        return layer._with_bias_of(linear)

    def codes(self) -> Tensor:
        """The 4-bit codes q (out, in), 0..15, unpacked from the stored bytes (low nibble first)."""
        return torch.stack((self.packed & 0xF, self.packed >> 4), dim=-1).reshape(self.out_features, -1)

    def dequantized(self) -> Tensor:
        q = self.codes().to(self.scales.dtype).reshape(self.out_features, -1, self.group_size)
        return (q * self.scales[..., None] + self.offsets[..., None]).reshape(self.out_features, self.in_features)

    def dequantized_matmul(self, x: Tensor) -> Tensor:
        """The portable path: dequantise the whole weight to x's dtype, then multiply."""
        return F.linear(x, self.dequantized().to(x.dtype))

    def _kernel_shape_ok(self) -> bool:
        return self.out_features % 16 == 0  # the int4 packing's rule (input widths are multiples of the group)

    def kernel_layout(self) -> tuple[Tensor, Tensor]:
        """The weight in `_weight_int4pack_mm_for_cpu`'s layout and its (in / group, out, 2) bf16 scales and zeros,
        made from the stored tensors on first use and again after a load or a move (`_load_from_state_dict`,
        `_apply`; the storage addresses are checked too). Writing into the buffers in place is not tracked.

        The kernel computes w = (q - 8) * scale + zero (torchao / gpt-fast's convention); the stored format is
        w = q * scale + offset with the same codes q, so zero = offset + 8 * scale.
        """
        made_from = tuple(t.data_ptr() for t in (self.packed, self.scales, self.offsets))
        if self._kernel_layout is None or self._kernel_layout[0] != made_from:
            weight = torch._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 1)
            scales = self.scales.float()
            zeros = self.offsets.float() + 8 * scales
            scales_and_zeros = torch.stack((scales, zeros), dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
            self._kernel_layout = (made_from, weight, scales_and_zeros)
        return self._kernel_layout[1], self._kernel_layout[2]

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._kernel_layout = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .bfloat16(): the layout is made again from the result
        self._kernel_layout = None
        return super()._apply(fn, *args, **kwargs)

    def kernel_matmul(self, x_bf16: Tensor) -> Tensor:
        """(M, in) bf16 -> (M, out) bf16 through `torch._weight_int4pack_mm_for_cpu` (gpt-fast's CPU int4 path)."""
        weight, scales_and_zeros = self.kernel_layout()
        return torch._weight_int4pack_mm_for_cpu(x_bf16, weight, self.group_size, scales_and_zeros)


# --- applying it ---------------------------------------------------------------------------------------------

def check_quantizable(model: object, where: str | Path | None = None) -> ModelConfig:
    """The model's config, or one line for a model with no linear layers to quantise (LSTM, n-gram)."""
    cfg = getattr(model, "cfg", None)
    if not isinstance(model, nn.Module) or not isinstance(cfg, ModelConfig):
        raise UserError("the n-gram baseline holds counts, not weight matrices: there is nothing to quantise",
                        where=where, fix="quantise a Transformer checkpoint (gpt, llama, bert or t5)")
    if kind_of(cfg) not in QUANTIZABLE_KINDS:
        raise UserError(f"weight-only quantisation swaps a Transformer's linear layers; this checkpoint is "
                        f"{describe(cfg)}, whose weights are LSTM gate matrices", where=where,
                        fix="quantise a Transformer checkpoint (gpt, llama, bert or t5)")
    return cfg


def _targets(model: nn.Module) -> list[str]:
    """Names of the linear layers to swap: all of them but one tied to another tensor (the output projection
    that is the embedding stays shared and float)."""
    tied = {name.removesuffix(".weight") for name in tied_names(model)}
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name not in tied]


def _swap(model: nn.Module, name: str, layer: _QuantizedLinear) -> None:
    layer.exact_output = name.split(".")[0] in HEAD_MODULES
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)


def quantize_model(model: nn.Module, spec: QuantizationSpec, where: str | Path | None = None) -> QuantizationSpec:
    """Swap `model`'s linear layers for quantised ones, in place; returns `spec` with the layers swapped."""
    check_quantizable(model, where)
    targets = _targets(model)
    if spec.bits == 4:
        uneven = [n for n in targets if model.get_submodule(n).in_features % spec.group_size]
        if uneven:
            layer = model.get_submodule(uneven[0])
            raise UserError(f"--group-size {spec.group_size} does not divide the {layer.in_features} inputs of "
                            f"{uneven[0]}", where=where, fix="pass a --group-size that divides every layer's "
                                                             "input width (32 usually does)")
    for name in targets:
        linear = model.get_submodule(name)
        _swap(model, name, Int8Linear.from_linear(linear) if spec.bits == 8
              else Int4Linear.from_linear(linear, spec.group_size))
    spec.layers = targets
    return spec


def apply_layout(model: nn.Module, spec: QuantizationSpec, where: str | Path) -> None:
    """Swap in empty quantised layers where `spec` says, so that a saved quantised state loads into `model`."""
    for name in spec.layers:
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            linear = None
        if not isinstance(linear, nn.Linear):
            raise UserError(f"{QUANTIZATION} names a layer '{name}' the model has no linear layer for", where=where,
                            fix="the file belongs to another checkpoint: re-run `lmforge quantize`")
        dtype, device = linear.weight.dtype, linear.weight.device
        bias = linear.bias is not None
        layer = (Int8Linear(linear.in_features, linear.out_features, bias, dtype, device) if spec.bits == 8 else
                 Int4Linear(linear.in_features, linear.out_features, bias, spec.group_size, dtype, device))
        _swap(model, name, layer)


# --- on disk -------------------------------------------------------------------------------------------------

def write_spec(directory: str | Path, spec: QuantizationSpec) -> None:
    from lmforge.atomic import write_json

    write_json(Path(directory) / QUANTIZATION, {"format": QUANTIZATION_FORMAT, **asdict(spec)})


def save_quantized(path: str | Path, model: nn.Module, cfg: ModelConfig, spec: QuantizationSpec,
                   tokenizer_dir: str | Path | None = None) -> Path:
    """A quantised checkpoint directory, atomically: weights, config, tokenizer, quantization.json, checksums."""
    from lmforge.atomic import atomic_directory, disk_full_as_user_error
    from lmforge.checksums import write_checksums
    from lmforge.models.io import WEIGHTS, write_model_files

    with disk_full_as_user_error(path, "a quantised checkpoint", need=quantized_bytes(model)), \
            atomic_directory(path) as tmp:
        write_model_files(tmp, model, cfg, Path(tokenizer_dir) if tokenizer_dir else None)
        write_spec(tmp, spec)
        write_checksums(tmp, [WEIGHTS, QUANTIZATION])
    return Path(path)


def read_spec(directory: str | Path) -> QuantizationSpec | None:
    """The quantisation of checkpoint `directory`; None for a float checkpoint; one line for a corrupt file."""
    path = Path(directory) / QUANTIZATION
    if not path.is_file():
        return None
    fix = "re-run `lmforge quantize` on the original checkpoint"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise UserError(f"quantisation record is unreadable ({e})", where=path, fix=fix) from None
    if not isinstance(data, dict) or data.get("format") != QUANTIZATION_FORMAT:
        raise UserError(f"not a {QUANTIZATION_FORMAT} record", where=path, fix=fix)
    layers = data.get("layers")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise UserError("quantisation record lists no layers", where=path, fix=fix)
    try:
        return QuantizationSpec(bits=data.get("bits"), group_size=data.get("group_size"), layers=layers)
    except UserError as e:
        raise UserError(f"quantisation record is invalid: {e.what}", where=path, fix=fix) from None


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the model's tensors as a checkpoint stores them (tied ones once)."""
    from lmforge.models.io import state_dict_for_save

    return sum(t.numel() * t.element_size() for t in state_dict_for_save(model).values())


__all__ = ["BITS", "GROUP_SIZES", "QUANTIZATION", "Int4Linear", "Int8Linear", "QuantizationSpec", "apply_layout",
           "check_quantizable", "quantize_model", "quantized_bytes", "read_spec", "save_quantized",
           "write_spec"]
