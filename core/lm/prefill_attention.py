"""A prompt's causal attention on the CPU (its prefill, float32): torch's
scaled_dot_product_attention or the C++ kernel (csrc/prefill_attention.cpp: about twice torch's flash
attention on two AMD EPYC vCPUs, 100-600 positions of 16 heads of 64).

Which of the two runs is timed at load for the model's heads (autotune.py) and kept with the linears'
paths; until then, or with FISHTTS_AUTOTUNE=0, the kernel where it is built. Both compute the same
softmax in float32, so the choice changes results only within float rounding (tests/core/test_lm_paths.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import cpu_kernels_available, uses_cpu_kernels

Layout = tuple[int, int, int]  # (query heads, key/value heads, head size)

_chosen: dict[Layout, str] = {}
_forced: list[str] = []  # `using`'s path, innermost last


def candidates(layout: Layout) -> list[str]:
    """The paths this machine can run for these heads, the default first."""
    n_head, n_kv_head, head_dim = layout
    kernel = (
        cpu_kernels_available() and n_head % n_kv_head == 0 and torch.ops.fishtts.prefill_attention_supports(head_dim)
    )
    return ["kernel", "torch"] if kernel else ["torch"]


def chosen(layout: Layout) -> str:
    if _forced and _forced[-1] in candidates(layout):
        return _forced[-1]
    return _chosen.get(layout) or candidates(layout)[0]


@contextmanager
def using(path: str) -> Iterator[None]:
    """`path` for every layout that can run it, within the block (tests, benchmarks)."""
    _forced.append(path)
    try:
        yield
    finally:
        _forced.pop()


def set_path(layout: Layout, path: str) -> None:
    """Use `path` for these heads from now on (process-wide)."""
    if path not in candidates(layout):
        raise ValueError(f"{path!r} is not a prompt attention path here ({', '.join(candidates(layout))})")
    _chosen[layout] = path


def causal_attention(q: Tensor, k: Tensor, v: Tensor, path: str | None = None) -> Tensor:
    """q [B, H, S, D], k and v [B, Hkv, P, D] with P >= S: the queries are the last S of P positions, query
    i sees keys 0 .. P - S + i -> [B, H, S, D]; `path` overrides the chosen one (the autotuner's timings)."""
    layout = (q.size(1), k.size(1), q.size(3))
    if uses_cpu_kernels(q) and (path or chosen(layout)) == "kernel":  # (chosen and set_path keep to candidates)
        return torch.ops.fishtts.prefill_attention(q, k, v)
    if q.size(1) != k.size(1):
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
        v = v.repeat_interleave(q.size(1) // v.size(1), dim=1)
    length, past = q.size(2), k.size(2)
    if length == past:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    keys = torch.arange(past, device=q.device)
    visible = keys <= torch.arange(past - length, past, device=q.device)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=visible)
