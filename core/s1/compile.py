"""Optional torch.compile of the Dual-AR's decode (the original's --compile).

Run op by op, one S1-mini frame (a slow step, then N fast-stack steps) dispatches ~7,100 torch ops
(counted on CPU); on an H200 that ran at 10.6 frames/s, ~13 us an op: launching them, not the GPU,
bound it. Compiled, both steps have fixed shapes (`decode_static` over every cache slot, `fast_step`
with its position as a tensor), so on CUDA "reduce-overhead" replays each as one CUDA graph and ~440
ops a frame stay eager: sampling, which draws from each sequence's own generator in the original's
order. The fixed shapes cost reading every slot's whole cache each step (S1-mini: 0.94 GB a slot in
bfloat16).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..lm.compile import uses_static_cache, warmed_and_checked
from .lm import DualARTransformer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSteps:
    slow: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (columns [B, 1 + N, 1], positions [B])
    fast: Callable[[Tensor, int], Tensor]  # (x [B, fast_dim], codebook position) -> logits [B, codebook_size]


def compiled_steps(model: DualARTransformer) -> DecodeSteps:
    """The two steps of the static decode: compiled where `compile_decode` succeeded (built once there),
    else the model's own."""
    return getattr(model, "compiled_decode", None) or decode_steps(model, model.decode_static, model.fast_step)


def decode_steps(model: DualARTransformer, slow: Callable, fast: Callable) -> DecodeSteps:
    """`slow(columns, positions)` and `fast(x, position tensor [1])` as DecodeSteps' two calls."""
    codebooks = torch.arange(model.config.num_codebooks, device=model.norm.weight.device)

    def slow_step(columns: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        # (a CUDA graph's outputs are overwritten by its next replay: copies, read across the fast steps)
        logits, hidden = slow(columns, positions)
        return logits.clone(), hidden.clone()

    return DecodeSteps(slow_step, lambda x, k: fast(x, codebooks[k : k + 1]).clone())


def compile_decode(model: DualARTransformer, slots: int) -> bool:
    """Compile both steps for `slots` rows (the static scheduler's batch, caches set up here) and run them
    now, so that the first request does not wait for it; each checked against the eager step. False
    (logged) where compiling or the check fails: the model then decodes eagerly."""
    mode = "reduce-overhead" if uses_static_cache(model) else None
    slow = torch.compile(model.decode_static, mode=mode, fullgraph=True)
    fast = torch.compile(model.fast_step, mode=mode, fullgraph=True)
    model.setup_caches(slots, model.config.max_seq_len, zeroed=True)
    device, n = model.norm.weight.device, model.config.num_codebooks
    # a semantic token over code 0 of each codebook: the embedding lookups stay in range (on CUDA an
    # index out of range is a device assert, which no fallback survives)
    columns = torch.zeros((slots, n + 1, 1), dtype=torch.int, device=device)
    columns[:, 0] = model.semantic_begin_id
    positions = torch.arange(slots, device=device)
    x = torch.ones((slots, model.config.fast_dim), dtype=model.norm.weight.dtype, device=device)
    position = torch.zeros(1, dtype=torch.long, device=device)
    checked = warmed_and_checked(
        "S1 decode",
        lambda: (slow(columns, positions)[0].clone(), fast(x, position).clone()),
        lambda: (model.decode_static(columns, positions)[0], model.fast_step(x, position)),
    )
    if checked:
        model.compiled_decode = decode_steps(model, slow, fast)
    return checked
