"""Optional torch.compile of the per-frame decode step (the original's --compile).

The step is compiled for the static-cache path (whole cache + mask), so every step has the same
shapes and compiles once. On CUDA, "reduce-overhead" adds CUDA graphs.
"""

from __future__ import annotations

import torch

from .model import Transformer


def compile_decode(model: Transformer) -> None:
    mode = "reduce-overhead" if model.output.weight.is_cuda else None
    model.compiled_decode = torch.compile(model.forward_generate, mode=mode, fullgraph=True)
