"""Optional torch.compile of the per-frame decode step (the original's --compile).

On CUDA the step is compiled for the static-cache path (whole cache + mask, "reduce-overhead" adds
CUDA graphs), so every step has the same shapes. On CPU reading the whole cache every step would cost
more than the weights, so the step attends over the filled prefix: the first call compiles for its
length, the second recompiles with the length symbolic, and that graph serves every later step
(fully dynamic shapes would also make the batch symbolic, which makes inductor's int8 matvec ~7x slower).
"""

from __future__ import annotations

import torch

from .model import Transformer


def uses_static_cache(model: Transformer) -> bool:
    return model.output.weight.is_cuda


def compile_decode(model: Transformer) -> None:
    mode = "reduce-overhead" if uses_static_cache(model) else None
    model.compiled_decode = torch.compile(model.forward_generate, mode=mode, fullgraph=True)
