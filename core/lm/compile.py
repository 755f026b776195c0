"""Optional torch.compile of the per-frame decode step (the original's --compile).

On CUDA the step runs over the static cache (whole cache + mask), so every step has the same shapes
and "reduce-overhead" captures it in CUDA graphs. On CPU the step keeps attending over each
sequence's filled prefix inside the decode-attention kernel (an opaque op to the compiler), and
inductor fuses the small ops around the kernels.
"""

from __future__ import annotations

import torch

from .model import Transformer


def uses_static_cache(model: torch.nn.Module) -> bool:
    """Whether a compiled decode steps over whole caches with fixed shapes (CUDA graphs), v0.2's or S1's."""
    return model.norm.weight.is_cuda


def compile_decode(model: Transformer) -> None:
    mode = "reduce-overhead" if uses_static_cache(model) else None
    model.compiled_decode = torch.compile(model.decode, mode=mode, fullgraph=True)
