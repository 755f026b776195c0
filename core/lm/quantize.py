"""Weight-only quantization of the LM's linears: int8 (the original's quantize.py format) and int4.

int8: every nn.Linear (output head included) becomes an `Int8Linear`: `weight` int8 [out, in] and
`scales` [out], symmetric per output row (scale = absmax / 127.5, values clamped to -128..127).
int4: an `Int4Linear`: per group of INT4_GROUP inputs of a row, w = q * scale + offset with q in
0..15 (offset = the group's minimum, scale = its range / 15), two values packed per byte in blocks
of INT4_ROWS rows: 0.5625 byte per weight with the bfloat16 scales and offsets. Its CPU kernel rounds
the activations to int8 per group (cpu_kernels.cpp); that error is small against int4's own.
The original's int4 checkpoints hold CUDA tinygemm-packed tensors (its quantize.py packs them on the
GPU) and are refused with a clear message; int4 here is quantized at load from the float checkpoint.
Activations stay float elsewhere, so only the weight bytes shrink: decode at batch 1 is bound by
reading the weights. Embeddings and biases stay float (a bias is added after the product, as
nn.Linear does). Which code computes the products is chosen in paths.py.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .paths import linear_int4, linear_int8

QUANT_MODES = ("int8", "int4")
INT4_GROUP = 64  # inputs per scale/offset pair (cpu_kernels.cpp's kInt4Group); widths must be multiples of it
INT4_ROWS = 16  # output rows packed together (cpu_kernels.cpp's kInt4Rows)
# Scales and offsets are stored in bfloat16: 1/9 of int4's bytes instead of 1/5 in float32. The values
# are quantized against the rounded scale and offset, so their rounding only moves the grid, each end by
# less than 2^-8 of the group's largest magnitude: a weight beyond an end is off by that much more.
INT4_SCALE_DTYPE = torch.bfloat16


def divided(x: Tensor, divisor: float) -> Tensor:
    """x / divisor, correctly rounded on every device. (CUDA turns a division by a Python number into a
    product with its rounded reciprocal: scales 1 ulp off move the rounding of rows' extreme weights,
    and an S1-mini quantized on an H200 gave logits 0.6% away from the same model quantized on a CPU.)"""
    return x / torch.full_like(x, divisor)


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """The original's dynamically_quantize_per_channel(w, -128, 127): (int8 [out, in], scales [out])."""
    w = weight.float()
    absmax = torch.maximum(-w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0))
    scales = divided(absmax, 127.5).clamp(min=torch.finfo(torch.float32).eps)
    q = torch.round(w / scales.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
    return q, scales.to(weight.dtype)  # like the original: quantized with float32 scales, stored in the model dtype


class Int8Linear(nn.Module):
    """y = (x @ weight.T) * scales, with int8 `weight` [out, in] and float `scales` [out]."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=torch.float32, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        return _add_bias(linear_int8(x, self.weight, self.scales), self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def quantize_int4(weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(packed uint8 [blocks, in / 8, 16, 4], bfloat16 scales and offsets [blocks, in / 64, 16]), asymmetric
    per group.

    Rows come in blocks of INT4_ROWS (the last one padded with zero rows, which come out as zeros): in
    chunk c of a block, row r's 4 bytes hold inputs 8c..8c+3 in their low nibbles and 8c+4..8c+7 in
    their high ones, so that the CPU kernel gives each of 16 rows a vector lane (cpu_kernels.cpp)."""
    out_features, in_features = weight.shape
    if in_features % INT4_GROUP:
        raise ValueError(f"int4 needs linears whose input width is a multiple of {INT4_GROUP} (got {in_features})")
    rows = int4_rows(out_features)
    w = weight.float()
    if rows != out_features:  # (F.pad would copy even a matrix it leaves as it is: 0.6 GB for S1's head)
        w = F.pad(w, (0, 0, 0, rows - out_features))
    w = w.view(rows, in_features // INT4_GROUP, INT4_GROUP)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scales = divided(high - low, 15).clamp(min=torch.finfo(torch.float32).eps).to(INT4_SCALE_DTYPE)
    offsets = low.to(INT4_SCALE_DTYPE)
    q = torch.round((w - offsets.float()[..., None]) / scales.float()[..., None]).clamp(0, 15).to(torch.uint8)
    chunks = q.view(rows // INT4_ROWS, INT4_ROWS, in_features // 8, 2, 4).permute(0, 2, 1, 3, 4)
    packed = chunks[..., 0, :] | (chunks[..., 1, :] << 4)
    return packed.contiguous(), _blocked(scales), _blocked(offsets)


def _blocked(per_row: Tensor) -> Tensor:
    """[rows, groups] -> [rows / 16, groups, 16]: a group's values for a block's rows side by side."""
    return per_row.view(-1, INT4_ROWS, per_row.size(1)).transpose(1, 2).contiguous()


def unblocked(blocked: Tensor) -> Tensor:
    """[blocks, groups, 16] -> [blocks * 16, groups]: a row's scales (or offsets), padding rows included."""
    return blocked.transpose(1, 2).reshape(-1, blocked.size(1))


def dequantize_int4(packed: Tensor, scales: Tensor, offsets: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The weights [blocks * 16, in] (padding rows included) of quantize_int4's layout."""
    blocks, chunks = packed.shape[:2]
    nibbles = torch.stack([packed & 15, packed >> 4], dim=3)  # [blocks, chunks, 16, 2, 4]
    q = nibbles.permute(0, 2, 1, 3, 4).reshape(blocks * INT4_ROWS, -1, INT4_GROUP)
    w = q.float() * unblocked(scales).float()[..., None] + unblocked(offsets).float()[..., None]
    return w.view(blocks * INT4_ROWS, chunks * 8).to(dtype)


def int4_width(in_features: int) -> int:
    """The stored input width: rounded up to whole groups (the extra inputs are zeros on both sides)."""
    return -(-in_features // INT4_GROUP) * INT4_GROUP


def int4_rows(out_features: int) -> int:
    """The stored output rows: rounded up to whole blocks (the extra rows' outputs are dropped)."""
    return -(-out_features // INT4_ROWS) * INT4_ROWS


class Int4Linear(nn.Module):
    """y = x @ dequantize_int4(weight, scales, offsets).T; `weight` is quantize_int4's packed uint8.

    Widths that are not whole groups, and output rows that are not whole blocks (small test models),
    are stored zero-padded: the activations are padded with zeros to match, and the extra outputs dropped."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=torch.float32, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        width, blocks = int4_width(in_features), int4_rows(out_features) // INT4_ROWS
        groups = width // INT4_GROUP
        self.register_buffer("weight", torch.empty(blocks, width // 8, INT4_ROWS, 4, dtype=torch.uint8, device=device))
        for name in ("scales", "offsets"):
            self.register_buffer(name, torch.empty(blocks, groups, INT4_ROWS, dtype=INT4_SCALE_DTYPE, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=dtype, device=device) if bias else None)

    @property
    def padded(self) -> bool:
        return int4_width(self.in_features) != self.in_features or int4_rows(self.out_features) != self.out_features

    def forward(self, x: Tensor) -> Tensor:
        padding = int4_width(self.in_features) - self.in_features
        if padding:
            x = F.pad(x, (0, padding))
        y = linear_int4(x, self.weight, self.scales, self.offsets)
        if y.size(-1) != self.out_features:
            y = y[..., : self.out_features]
        return _add_bias(y, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _add_bias(y: Tensor, bias: Tensor | None) -> Tensor:
    return y if bias is None else y + bias.to(y.dtype)


def _copy_bias(layer: nn.Module, linear: nn.Linear) -> None:
    if linear.bias is not None:
        layer.bias = linear.bias.detach().to(layer.bias.dtype)


def _linears(model: nn.Module):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                yield parent, name, child


# The quantized paths keep their KV cache in bfloat16, as the original does on GPU: half the cache
# traffic per decode step, which at a few hundred positions and batch 4 rivals the int8 weights' own.
QUANTIZED_KV_CACHE_DTYPE = torch.bfloat16


def convert_to_int8(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Swap every nn.Linear for an empty Int8Linear (to load an int8 state dict into)."""
    for parent, name, child in _linears(model):
        layer = Int8Linear(
            child.in_features, child.out_features, child.weight.device, dtype, bias=child.bias is not None
        )
        setattr(parent, name, layer)
    model.kv_cache_dtype = QUANTIZED_KV_CACHE_DTYPE
    return model


@torch.no_grad()
def quantize_model_int8(model: nn.Module) -> nn.Module:
    """Quantize a float model's linears in place (frees the float weights as it goes)."""
    for parent, name, child in _linears(model):
        q, scales = quantize_int8(child.weight)
        layer = Int8Linear(child.in_features, child.out_features, q.device, scales.dtype, child.bias is not None)
        layer.weight, layer.scales = q, scales
        _copy_bias(layer, child)
        setattr(parent, name, layer)
    model.kv_cache_dtype = QUANTIZED_KV_CACHE_DTYPE
    return model


@torch.no_grad()
def quantize_model_int4(model: nn.Module) -> nn.Module:
    """Quantize a float model's linears to int4 in place."""
    for parent, name, child in _linears(model):
        weight = child.weight
        layer = Int4Linear(child.in_features, child.out_features, weight.device, weight.dtype, child.bias is not None)
        padding = int4_width(child.in_features) - child.in_features
        layer.weight, layer.scales, layer.offsets = quantize_int4(F.pad(weight, (0, padding)) if padding else weight)
        _copy_bias(layer, child)
        setattr(parent, name, layer)
    model.kv_cache_dtype = QUANTIZED_KV_CACHE_DTYPE
    return model


def quantize_model(model: nn.Module, mode: str) -> nn.Module:
    if mode not in QUANT_MODES:
        raise ValueError(f"unknown quantization {mode!r} (use one of: {', '.join(QUANT_MODES)})")
    return quantize_model_int8(model) if mode == "int8" else quantize_model_int4(model)


def weight_format(layer: nn.Module) -> str | None:
    """paths.py's name for a linear layer's weight format (None: not an LM linear)."""
    if isinstance(layer, Int8Linear):
        return "int8"
    if isinstance(layer, Int4Linear):
        return "int4"
    if isinstance(layer, nn.Linear) and layer.weight.dtype == torch.float32:
        return "float32"
    return None


def is_quantized(model: nn.Module) -> bool:
    return quantization(model) != "none"


def quantization(model: nn.Module) -> str:
    """ "int8" / "int4" for a model whose linears are quantized, else "none"."""
    for m in model.modules():
        if isinstance(m, (Int8Linear, Int4Linear)):
            return weight_format(m)
    return "none"


def checkpoint_quantization(state_dict: dict[str, Tensor]) -> str | None:
    """ "int8" / "int4" when the state dict holds the original's quantized linears, else None."""
    if any(k.endswith(".scales_and_zeros") for k in state_dict):
        return "int4"
    if any(k.endswith(".scales") for k in state_dict):
        return "int8"
    return None
