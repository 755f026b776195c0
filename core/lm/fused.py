"""A CPU decode step's transformer layers as one C++ call each (cpu_kernels.cpp `decode_layer`).

Why: a layer's decode is ~12 small calls (norms, five linears, attention, residual adds, SwiGLU), and
their Python and dispatch cost ~40 us a layer, ~1 ms a step: as much as the attention itself. The C++
op runs the very same kernels in the same order, so a layer's result is the same bits; it is used only
where every part of the layer would take a kernel anyway (the format's chosen decode path is a kernel,
no biases, the attention kernel's head layout and cache types). S1-mini's layers (core/s1/lm.py, the same
parameter names plus per-head q/k norms) take the same op: there it replaces ~25 torch calls a layer, and
its rounding differs from the modules' only where they use torch's own attention and norms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import paths
from .kernels import KERNEL_CACHE_DTYPES, few_rows
from .quantize import weight_format

# cpu_kernels.cpp's LinearKind
FLOAT32, INT8, INT8_VNNI, INT4, INT8_AMX = 0, 1, 2, 3, 4
_BUFFERS = {
    FLOAT32: ("weight",),
    INT8: ("weight", "scales"),
    INT8_VNNI: ("weight", "scales"),
    INT8_AMX: ("weight", "scales"),
    INT4: ("weight", "scales", "offsets"),
}
_FORMAT = {FLOAT32: "float32", INT8: "int8", INT8_VNNI: "int8", INT8_AMX: "int8", INT4: "int4"}


def decode_kind(first_layer: nn.Module, h: Tensor) -> int | None:
    """The linear kind every layer of this step would run, or None where some part would not take a kernel."""
    attention = first_layer.attention
    if not (few_rows(h) and attention.kernel_layout and attention.kv_cache.k_cache.dtype in KERNEL_CACHE_DTYPES):
        return None
    fmt = weight_format(attention.wqkv)
    path = paths.chosen(fmt)["decode"] if fmt is not None else ""
    if not path.startswith("kernel"):
        return None
    if fmt == "int8":
        return INT8_VNNI if "-vnni" in path else INT8_AMX if "-amx" in path else INT8
    return INT4 if fmt == "int4" else FLOAT32


def layer_tensors(layer: nn.Module, kind: int) -> list[Tensor] | None:
    """wqkv, wo, w1, w3, w2's tensors for `decode_layer` (None: not fusable); layer_steps keeps them."""
    attention, ffn = layer.attention, layer.feed_forward
    linears = [attention.wqkv, attention.wo, ffn.w1, ffn.w3, ffn.w2]
    fmt = _FORMAT[kind]
    norms = [layer.attention_norm, layer.ffn_norm, *head_norms(attention)]
    if any(weight_format(m) != fmt or getattr(m, "bias", None) is not None for m in linears) or any(
        n.weight is None or n.weight.dtype != torch.float32 for n in norms
    ):
        return None
    if len({n.eps for n in norms}) > 1:  # (the C++ op takes one)
        return None
    if kind == INT4 and any(m.padded for m in linears):  # (padded widths or rows)
        return None
    return [getattr(m, name) for m in linears for name in _BUFFERS[kind]]


def head_norms(attention: nn.Module) -> list[nn.Module]:
    """The attention's per-head q and k norms (S1-mini), or none (v0.2)."""
    return [attention.q_norm, attention.k_norm] if hasattr(attention, "q_norm") else []


LayerStep = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]  # (h, slots, positions, rope) -> h


def layer_steps(layers: nn.ModuleList, kind: int) -> list[LayerStep | None]:
    """Per layer, its `decode_layer` call with everything but the step's own inputs bound, or None where
    the layer is not fusable. Built once per kind, caches and weights: looking up a layer's ~10 arguments
    at every step cost ~1.2 ms of a ~22 ms int8 step (Intel Xeon). The caches and weights are replaced
    whole (setup_caches, quantization, huge pages, `.to`), so the first and last layers' tell."""
    first, last = layers[0].attention, layers[-1].attention
    key = (first.kv_cache.k_cache, first.wqkv.weight, last.kv_cache.k_cache, last.wqkv.weight)
    cached = layers.__dict__.get("_layer_steps")
    if cached is not None and cached[0] == kind and all(a is b for a, b in zip(cached[1], key, strict=True)):
        return cached[2]
    steps = []
    for layer in layers:
        tensors = layer_tensors(layer, kind)
        steps.append(None if tensors is None else _layer_step(layer, tensors, kind))
    layers.__dict__["_layer_steps"] = (kind, key, steps)
    return steps


def _layer_step(layer: nn.Module, tensors: list[Tensor], kind: int) -> LayerStep:
    attention, cache = layer.attention, layer.attention.kv_cache
    weights = (tensors, kind, layer.attention_norm.weight, layer.ffn_norm.weight, layer.attention_norm.eps)
    caches, heads = (cache.k_cache, cache.v_cache), (attention.n_head, attention.n_local_heads)
    qk_norms = [n.weight for n in head_norms(attention)] or [None, None]
    op = torch.ops.fishtts.decode_layer
    return lambda h, slots, positions, rope: op(h, *weights, *caches, slots, positions, rope, *heads, *qk_norms)
