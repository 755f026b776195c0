"""Int8 weight-only quantization of the LM's linears, in the format of the original's quantize.py.

Every nn.Linear (output head included) becomes an `Int8Linear`: `weight` int8 [out, in] and
`scales` [out], symmetric per output row (scale = absmax / 127.5, values clamped to -128..127).
Activations stay float, so only the weight bytes shrink (4x against float32): decode at batch 1
is bound by reading the weights, so it gets up to ~4x faster. Embeddings stay float.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .kernels import cpu_has_fast_bfloat16, few_rows, linear_rows, uses_cpu_kernels

QUANT_MODES = ("int8",)


def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """The original's dynamically_quantize_per_channel(w, -128, 127): (int8 [out, in], scales [out])."""
    w = weight.float()
    absmax = torch.maximum(-w.amin(dim=1).clamp(max=0), w.amax(dim=1).clamp(min=0))
    scales = (absmax / 127.5).clamp(min=torch.finfo(torch.float32).eps)
    q = torch.round(w / scales.unsqueeze(-1)).clamp(-128, 127).to(torch.int8)
    return q, scales.to(weight.dtype)  # like the original: quantized with float32 scales, stored in the model dtype


class Int8Linear(nn.Module):
    """y = (x @ weight.T) * scales, with int8 `weight` [out, in] and float `scales` [out]."""

    def __init__(self, in_features: int, out_features: int, device=None, dtype=torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scales", torch.empty(out_features, dtype=dtype, device=device))

    def forward(self, x: Tensor) -> Tensor:
        if few_rows(x):  # decode: stream the int8 weights
            return linear_rows(x, self.weight, self.scales)
        if uses_cpu_kernels(x) and cpu_has_fast_bfloat16():
            # Prefill on a CPU with bfloat16 matmuls: ~4x faster than float32. The int8 values are
            # exact in bfloat16; the activations and sums are rounded to it (this path is approximate anyway).
            weight = torch.ops.fishtts.int8_to_bfloat16(self.weight)
            return F.linear(x.to(torch.bfloat16), weight).to(x.dtype) * self.scales
        # GPU and fallback: the original's formula (dequantize, then a regular matmul).
        return F.linear(x, self.weight.to(x.dtype)) * self.scales.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _linears(model: nn.Module):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                yield parent, name, child


# The int8 path keeps its KV cache in bfloat16, as the original does on GPU: half the cache traffic
# per decode step, which at a few hundred positions and batch 4 rivals the int8 weights' own.
INT8_KV_CACHE_DTYPE = torch.bfloat16


def convert_to_int8(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Swap every nn.Linear for an empty Int8Linear (to load an int8 state dict into)."""
    for parent, name, child in _linears(model):
        device = child.weight.device
        setattr(parent, name, Int8Linear(child.in_features, child.out_features, device=device, dtype=dtype))
    model.kv_cache_dtype = INT8_KV_CACHE_DTYPE
    return model


@torch.no_grad()
def quantize_model_int8(model: nn.Module) -> nn.Module:
    """Quantize a float model's linears in place (frees the float weights as it goes)."""
    for parent, name, child in _linears(model):
        q, scales = quantize_int8(child.weight)
        layer = Int8Linear(child.in_features, child.out_features, device=q.device, dtype=scales.dtype)
        layer.weight, layer.scales = q, scales
        setattr(parent, name, layer)
    model.kv_cache_dtype = INT8_KV_CACHE_DTYPE
    return model


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def checkpoint_quantization(state_dict: dict[str, Tensor]) -> str | None:
    """ "int8" / "int4" when the state dict holds the original's quantized linears, else None."""
    if any(k.endswith(".scales_and_zeros") for k in state_dict):
        return "int4"
    if any(k.endswith(".scales") for k in state_dict):
        return "int8"
    return None
