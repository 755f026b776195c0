"""The LM's CPU decode kernels (csrc/cpu_kernels.cpp), compiled on first use, and their torch fallbacks.

Why: a decode step is bound by reading the weights once per token. torch's CPU matrix-vector product
streams them at half the bandwidth on some CPUs (AMD Zen) and near it on others (Intel Sapphire
Rapids), its int8 paths far slower, and the ~40 small ops of RoPE + cache write + attention per layer
cost more than the weights at int8. The kernels stream float32 / bfloat16 / int8 / int4 weights and do
a layer's attention in one call. They are batch-invariant: a row's result does not depend on the
other rows in the call. The same extension holds the sampler's sort and draw (csrc/sampling.cpp).

The extension is built with -march=native (or FISHTTS_KERNEL_ARCH) into torch's extension cache, keyed
by the CPU capability and the CPU's feature flags (a cache shared between CPU models never loads another's
build); without a compiler (or with FISHTTS_NO_KERNELS=1) plain torch computes the same
thing. Which of the two (and which kernel setting) runs each weight format is chosen in paths.py /
autotune.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from collections.abc import Iterable
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..tuning import cpu_flags_digest

log = logging.getLogger(__name__)

MAX_ROWS = 8  # activation rows the matrix-vector kernel serves; more rows (prefill) go to a matmul
KERNEL_CACHE_DTYPES = (torch.float32, torch.bfloat16)  # KV caches the decode-attention kernel reads


def kernel_head_dim(head_dim: int) -> bool:
    """Whether the kernels' RoPE and decode attention handle heads of this size (16 values a vector)."""
    return head_dim % 16 == 0 and head_dim <= 256


def attention_kernel_layout(n_head: int, n_kv_head: int, head_dim: int) -> bool:
    """Whether the decode-attention kernel handles these heads (v0.2: 16 of 64; S1-mini: 16 of 128, 8 for k/v)."""
    return kernel_head_dim(head_dim) and n_head % n_kv_head == 0


SOURCE = Path(__file__).with_name("csrc") / "cpu_kernels.cpp"  # the decode kernels
SAMPLING_SOURCE = SOURCE.with_name("sampling.cpp")  # the sampler's sort and draw (sampling.py)
INT8_ROWS_SOURCE = SOURCE.with_name("int8_rows.cpp")  # the int8 prefill's rounding and rescaling (paths.py)
ATTENTION_SOURCE = SOURCE.with_name("prefill_attention.cpp")  # a prompt's causal attention (model.py)
SNAKE_SOURCE = SOURCE.with_name("snake.cpp")  # the S1 codec's Snake activation (s1/codec/convs.py)
# All in one extension; the autotuner keys its cache by them.
SOURCES = (SOURCE, SAMPLING_SOURCE, INT8_ROWS_SOURCE, ATTENTION_SOURCE, SNAKE_SOURCE)
HEADERS = (SOURCE.with_name("vector_math.h"),)  # included by each of the sources


@cache
def sources_digest() -> str:
    """The sources' and headers' contents, hashed (read once a process): torch rebuilds an extension when its
    sources or flags change but does not read headers, so the build flags carry this (and the autotuner's
    cache key)."""
    return hashlib.sha1(b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))).hexdigest()[:12]


_state: dict[str, bool] = {}


def cpu_kernels_available() -> bool:
    """Build (or load from the cache) the extension once per process; False if that fails."""
    if "ok" not in _state:
        _state["ok"] = _build()
    return _state["ok"]


def _build() -> bool:
    if os.environ.get("FISHTTS_NO_KERNELS") or platform.machine() not in ("x86_64", "AMD64", "aarch64"):
        return False
    try:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        # FISHTTS_KERNEL_ARCH (a gcc -march value) builds for an older CPU than this one, so that the
        # tests can run, say, the AVX2-only code of an AMD Zen 2 on an AVX-512 machine.
        arch = os.environ.get("FISHTTS_KERNEL_ARCH", "native")
        # -march=native compiles for this CPU's flags: a cache shared with another CPU model must not load
        # this one's build (AVX512-VNNI code on a CPU without it: SIGILL)
        target = cpu_flags_digest() if arch == "native" else arch.replace("-", "_")
        name = f"fishtts_cpu_{torch.backends.cpu.get_cpu_capability().lower()}_{target}"
        build_dir = _build_directory(name)
        with _build_turn(build_dir):
            load(
                name,
                [str(source) for source in SOURCES],
                is_python_module=False,
                verbose=False,
                build_directory=str(build_dir),
                extra_cflags=["-O3", f"-march={arch}", "-fopenmp", f"-DFISHTTS_SOURCES={sources_digest()}"],
            )
        torch.ops.fishtts.start_pool(torch.get_num_threads())
        # Output shapes, so torch.compile can treat the kernels as opaque ops.
        torch.library.register_fake("fishtts::linear_rows")(lambda x, w, s: x.new_empty(*x.shape[:-1], w.size(0)))
        torch.library.register_fake("fishtts::decode_attention")(
            lambda qkv, kc, vc, slots, pos, freqs, h, hkv, *norms: qkv.new_empty(qkv.size(0), h * kc.size(3))
        )
        torch.library.register_fake("fishtts::linear_rows_int8_vnni")(
            lambda x, w, s: x.new_empty(*x.shape[:-1], w.size(0))
        )
        torch.library.register_fake("fishtts::linear_rows_int8_amx")(
            lambda x, w, s: x.new_empty(*x.shape[:-1], w.size(0))
        )
        torch.library.register_fake("fishtts::rms_norm")(lambda x, w, eps: torch.empty_like(x))
        torch.library.register_fake("fishtts::rope_rows")(lambda x, freqs: x.new_empty(x.shape))
        torch.library.register_fake("fishtts::decode_layer")(lambda x, *rest: torch.empty_like(x))
        torch.library.register_fake("fishtts::linear_rows_int4")(
            lambda x, packed, scales, offsets: x.new_empty(*x.shape[:-1], packed.size(0) * packed.size(2))
        )
        return True
    except Exception as exc:  # no compiler, no headers, no ninja: the torch fallbacks still work
        # (one line; the compiler's output, often dozens of lines, at debug level)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        log.warning("CPU decode kernels unavailable (%s); using the slower torch path", first)
        log.debug("the kernels' build failed: %s", exc)
        return False


def _builds_root() -> Path:
    """torch's extension cache (TORCH_EXTENSIONS_DIR, else its default), a folder per torch version: the
    build's folder is ours to name, so that the build can be guarded (_build_turn)."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / f"torch-{torch.__version__}"


def _build_directory(name: str) -> Path:
    folder = _builds_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def _build_turn(build_dir: Path):
    """One process at a time builds or loads into `build_dir`, under an OS lock that dies with its holder.
    torch's own lock is a file that a build killed midway (Ctrl-C during a first start, the OOM killer) left
    behind, and every later load waited on it forever; under ours, a torch lock file is always a dead one."""
    try:
        import fcntl
    except ImportError:  # (not POSIX: torch's lock alone)
        yield
        return
    with open(build_dir.with_name(build_dir.name + ".turn"), "a") as turn:
        try:
            fcntl.flock(turn, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process's build of the CPU kernels (%s)", build_dir)
            fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            stale = build_dir / "lock"
            if stale.exists():
                log.warning("removing a kernel build lock left by a process that died: %s", stale)
                stale.unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)


def _put_ninja_on_path() -> None:
    """torch builds extensions with the `ninja` on PATH; the pip package's may not be (venv not activated)."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path


def uses_cpu_kernels(x: Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype == torch.float32 and cpu_kernels_available()


def has_few_rows(x: Tensor) -> bool:
    """At most MAX_ROWS rows of activations: a decode step's work, not a prefill's."""
    return x.numel() <= MAX_ROWS * x.shape[-1]


def few_rows(x: Tensor) -> bool:
    """A decode step's input on a CPU with the kernels."""
    return has_few_rows(x) and uses_cpu_kernels(x)


def linear_rows(x: Tensor, weight: Tensor, scales: Tensor | None = None) -> Tensor:
    """x [..., in] @ weight.T (* scales) for the few rows of a decode step; weight float32, bfloat16 or int8."""
    if uses_cpu_kernels(x):
        return torch.ops.fishtts.linear_rows(x, weight, scales)
    y = F.linear(x, weight.to(x.dtype))
    return y if scales is None else y * scales.to(x.dtype)


@contextmanager
def single_threaded_torch():
    """torch's own ops on one thread in this block (the kernels keep their pool): a decode step's small
    ops (36k-element softmax, top-k, ...) are faster serial than split over OpenMP, and OpenMP workers
    spinning on the second core slow the kernels' pool."""
    if not cpu_kernels_available():
        yield
        return
    previous = torch.ops.fishtts.set_openmp_threads(1)
    try:
        yield
    finally:
        torch.ops.fishtts.set_openmp_threads(previous)


HUGE_PAGE_ALIGNMENT = 64  # bytes: each tensor in the shared region starts on a cache line


def move_to_huge_pages(modules: Iterable[torch.nn.Module]) -> None:
    """Copy the modules' own tensors, in order, into one region of memory backed by huge pages where the
    OS gives them on request (Linux THP "madvise"): a decode step streams every weight once, and with
    4 KiB pages that is a page walk per 4 KiB. One region, not one per tensor, so that the small ones
    (int4's 0.5-1.5 MB matrices and every format's scales) get huge pages too: int4's linears streamed
    ~10% faster (Intel Xeon). Values are unchanged; modules already moved are skipped."""
    if not cpu_kernels_available():
        return
    todo, offsets, total = [], {}, 0
    for module in modules:
        if getattr(module, "on_huge_pages", False):
            continue
        module.on_huge_pages = True
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor.device.type != "cpu":
                continue
            todo.append((module, name, tensor))
            if id(tensor) not in offsets:  # (a tensor two modules share moves once and stays shared)
                offsets[id(tensor)] = total
                total += -(-tensor.numel() * tensor.element_size() // HUGE_PAGE_ALIGNMENT) * HUGE_PAGE_ALIGNMENT
    if total == 0:
        return
    # (untouched: the region's pages come one tensor at a time, as each old tensor is let go)
    region = torch.ops.fishtts.huge_page_empty(total)
    moved: dict[int, Tensor] = {}
    for module, name, tensor in todo:
        if id(tensor) not in moved:
            offset, size = offsets[id(tensor)], tensor.numel() * tensor.element_size()
            copy = region[offset : offset + size].view(tensor.dtype).view(tensor.shape)
            copy.copy_(tensor.detach())
            is_parameter = isinstance(tensor, torch.nn.Parameter)
            moved[id(tensor)] = torch.nn.Parameter(copy, requires_grad=False) if is_parameter else copy
        setattr(module, name, moved[id(tensor)])
