"""Optional torch.compile of the per-frame decode step (the original's --compile).

On CUDA the step runs over the static cache (whole cache + mask), so every step has the same shapes
and "reduce-overhead" captures it in CUDA graphs, at load (`capture_decode`; compiling took up to 84 s
at official size on an H200, which a first request would otherwise wait for). On CPU the step keeps
attending over each sequence's filled prefix inside the decode-attention kernel (an opaque op to the
compiler), and inductor fuses the small ops around the kernels on first use.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import Tensor

from .model import Transformer

log = logging.getLogger(__name__)
Outputs = Callable[[], tuple[Tensor, ...]]  # a step run once, its outputs

# A compiled step against the eager one at load: bfloat16 / float16 fused otherwise rounds differently
# (~1%); wrong code is off by the logits' own size.
MAX_RELATIVE_ERROR = 0.05


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


def capture_decode(model: Transformer, slots: int) -> bool:
    """Run the compiled static step now for `slots` rows (the static scheduler's batch; caches set up
    here), on the thread that will replay it, and check it against the eager step. False (logged) where
    compiling or the check fails: the compiled step is dropped and the model decodes eagerly."""
    model.setup_caches(slots, model.config.max_seq_len, zeroed=True)
    device = model.output.weight.device
    # pad frames at position 0 of every slot: a prefill writes there before any real decode reads it
    frames = torch.zeros((slots, model.config.num_codebooks + 1, 1), dtype=torch.int, device=device)
    rows, positions = torch.arange(slots, device=device), torch.zeros(slots, dtype=torch.long, device=device)

    def logits(decode) -> tuple[Tensor, Tensor]:
        out = decode(frames, rows, positions, True)
        return out.token_logits.clone(), out.codebook_logits.clone()

    if warmed_and_checked("decode", lambda: logits(model.compiled_decode), lambda: logits(model.decode)):
        return True
    model.compiled_decode = None
    return False


def warmed_and_checked(name: str, compiled: Outputs, eager: Outputs) -> bool:
    """Run `compiled()` until its CUDA graphs are recorded (a later call than the first), then compare its
    outputs with `eager()`'s. `compiled()` returns copies: a graph's outputs are overwritten by its next
    replay, another graph's included. False, with a warning that `name` runs eagerly, where that raises
    or they disagree beyond MAX_RELATIVE_ERROR."""
    try:
        with torch.inference_mode():
            for _ in range(3):
                got = compiled()
            error = max(relative_error(a, b) for a, b in zip(got, eager(), strict=True))
    except Exception:  # noqa: BLE001 - any failure to compile leaves the eager decode, which works
        log.warning("compiling the %s failed; it runs eagerly", name, exc_info=True)
        return False
    if error > MAX_RELATIVE_ERROR:
        log.warning("the compiled %s disagrees with the eager one (%.3g); it runs eagerly", name, error)
        return False
    return True


def relative_error(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-30))
