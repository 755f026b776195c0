"""A CPU decode step's transformer layers as one C++ call each (cpu_kernels.cpp `decode_layer`), and the
whole stack of them as one call a step (`LayerStack`: the same calls in order, from C++).

Why: a layer's decode is ~12 small calls (norms, five linears, attention, residual adds, SwiGLU), and
their Python and dispatch cost ~40 us a layer, ~1 ms a step: as much as the attention itself. The C++
op runs the very same kernels in the same order, so a layer's result is the same bits; it is used only
where every part of the layer would take a kernel anyway (the format's chosen decode path is a kernel,
no biases, the attention kernel's head layout and cache types). S1-mini's layers (core/s1/lm.py, the same
parameter names plus per-head q/k norms) take the same op: there it replaces ~25 torch calls a layer, and
its rounding differs from the modules' only where they use torch's own attention and norms. The call
a layer still cost ~16 us to pass its ~20 arguments: 0.3-0.4 ms of a v0.2 step, which the stack saves.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import paths
from .kernels import KERNEL_CACHE_DTYPES, few_rows
from .quantize import weight_format

# cpu_kernels.cpp's LinearKind
FLOAT32, INT8, INT8_VNNI, INT4, INT8_AMX, INT8_BYTES = 0, 1, 2, 3, 4, 5
_BUFFERS = {
    FLOAT32: ("weight",),
    INT8: ("weight", "scales"),
    INT8_VNNI: ("weight", "scales"),
    INT8_AMX: ("weight", "scales"),
    INT8_BYTES: ("weight", "scales"),
    INT4: ("weight", "scales", "offsets"),
}
# (weight format, paths.arithmetic of its decode path) -> the kind decode_layer runs
_KINDS = {
    ("float32", "kernel"): FLOAT32,
    ("int8", "kernel"): INT8,
    ("int8", "kernel-vnni"): INT8_VNNI,
    ("int8", "kernel-amx"): INT8_AMX,
    ("int8", "kernel-bytes"): INT8_BYTES,
    ("int4", "kernel"): INT4,
}
_FORMAT = {kind: fmt for (fmt, _), kind in _KINDS.items()}


def decode_kind(first_layer: nn.Module, h: Tensor) -> int | None:
    """The linear kind every layer of this step would run, or None where some part would not take a kernel."""
    attention = first_layer.attention
    if not (few_rows(h) and attention.kernel_layout and attention.kv_cache.k_cache.dtype in KERNEL_CACHE_DTYPES):
        return None
    fmt = weight_format(attention.wqkv)
    return None if fmt is None else _KINDS.get((fmt, paths.arithmetic(paths.chosen(fmt)["decode"])))


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
    the layer is not fusable."""
    return _bound(layers, kind)["steps"]


def layer_stack(layers: nn.ModuleList, kind: int) -> LayerStep | None:
    """All `layers` in one C++ call (cpu_kernels.cpp's LayerStack, the layers' `decode_layer` calls in
    order: the same bits), or None where a layer is not fusable or torch.compile traces the step (it
    takes the per-layer calls, opaque ops to it)."""
    if torch.compiler.is_compiling():
        return None
    bound = _bound(layers, kind)
    if "stack" not in bound:
        arguments = bound["arguments"]
        stack = None
        if all(a is not None for a in arguments):
            stack = torch.classes.fishtts.LayerStack()
            for before, after in arguments:
                stack.add(*before, *after)
        bound["stack"] = None if stack is None else stack.run
    return bound["stack"]


def _bound(layers: nn.ModuleList, kind: int) -> dict:
    """The layers' decode_layer arguments, their steps (and the stack, once asked for), built once per
    kind, caches and weights: looking up a layer's ~10 arguments at every step cost ~1.2 ms of a ~22 ms
    int8 step (Intel Xeon). The caches and weights are replaced whole (setup_caches, quantization, huge
    pages, `.to`), so the first and last layers' tell."""
    first, last = layers[0].attention, layers[-1].attention
    key = (first.kv_cache.k_cache, first.wqkv.weight, last.kv_cache.k_cache, last.wqkv.weight)
    cached = _BOUND.get(layers)
    if cached is not None and cached[0] == kind and all(a is b for a, b in zip(cached[1], key, strict=True)):
        return cached[2]
    arguments = [_layer_arguments(layer, kind) for layer in layers]
    op = torch.ops.fishtts.decode_layer
    bound = {"arguments": arguments, "steps": [None if a is None else _layer_step(op, *a) for a in arguments]}
    _BOUND[layers] = (kind, key, bound)
    return bound


# Per stack of layers, outside the modules: a deep copy of a model (the bench's formats) must not copy the
# C++ stack, which cannot be copied, nor share it (it holds the original's tensors).
_BOUND: weakref.WeakKeyDictionary[nn.ModuleList, tuple] = weakref.WeakKeyDictionary()


def _layer_arguments(layer: nn.Module, kind: int) -> tuple[tuple, tuple] | None:
    """decode_layer's arguments but the step's own: those before them and those after."""
    tensors = layer_tensors(layer, kind)
    if tensors is None:
        return None
    attention, cache = layer.attention, layer.attention.kv_cache
    before = (tensors, kind, layer.attention_norm.weight, layer.ffn_norm.weight, layer.attention_norm.eps)
    qk_norms = [n.weight for n in head_norms(attention)] or [None, None]
    return (*before, cache.k_cache, cache.v_cache), (attention.n_head, attention.n_local_heads, *qk_norms)


def _layer_step(op, before: tuple, after: tuple) -> LayerStep:
    return lambda h, slots, positions, rope: op(h, *before, slots, positions, rope, *after)
