"""Optional torch.compile of the per-frame decode step (the original's --compile).

On CUDA the step runs over the static cache (whole cache + mask), so every step has the same shapes
and "reduce-overhead" captures it in CUDA graphs. On CPU the step keeps attending over each
sequence's filled prefix inside the decode-attention kernel (an opaque op to the compiler), and
inductor fuses the small ops around the kernels.
"""

from __future__ import annotations

import threading
from collections import defaultdict

import torch

from .model import Transformer


def uses_static_cache(model: torch.nn.Module) -> bool:
    """Whether a compiled decode steps over whole caches with fixed shapes (CUDA graphs), v0.2's or S1's."""
    return model.norm.weight.is_cuda


def own_cuda_graph_trees() -> None:
    """Set up this thread's CUDA graph trees before it compiles or replays a graph.

    Inductor keeps them in thread-local storage made in the thread that imported it; torch 2.11 asserts
    in any other thread (seen on an H200: a second engine's scheduler thread could not replay), newer
    torch makes them on first use, as this does."""
    from torch._inductor import cudagraph_trees as trees

    local, in_tls = getattr(trees, "local", None), getattr(torch._C, "_is_key_in_tls", None)
    if local is None or in_tls is None:  # (another torch: nothing of the kind to set up)
        return
    if hasattr(local, "tree_manager_containers") or in_tls("tree_manager_containers"):
        return
    local.tree_manager_containers = {}  # one tree manager per device
    local.tree_manager_locks = defaultdict(threading.Lock)


def compile_decode(model: Transformer) -> None:
    mode = "reduce-overhead" if uses_static_cache(model) else None
    model.compiled_decode = torch.compile(model.decode, mode=mode, fullgraph=True)
