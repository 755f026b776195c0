"""Which implementation computes the LM's linears, per weight format: decode (a few rows) and prefill.

Every candidate computes the same product within the format's tolerance; they differ only in speed,
which differs between CPUs (core/lm/autotune.py measures them at load and sets the fastest here).

Decode candidates: the C++ kernel with one of KERNEL_VARIANTS' prefetch/thread settings (for int8 on
AVX512-VNNI or AVX2 also with int16 activations, on AVX512-VNNI with those as two bytes, and with AMX
on its tiles), plain torch (the original's formula), and torch's packed int8 kernel; steps of one
sequence and of several may take two settings of one kernel ("decode", "batch_decode"). Prefill
candidates: a float32 matmul, or a bfloat16 one (AMX / AVX512-BF16; quantized formats only: their
weights are exact or nearly so in bfloat16, a float32 model keeps float32), for int8 an int8 matmul
(the activations rounded to int8 per row), or for the quantized formats the decode kernel over all rows.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tuning import cpu_has_fast_bfloat16
from .kernels import cpu_kernels_available, few_rows, has_few_rows

FORMATS = ("float32", "int8", "int4")


@dataclass(frozen=True)
class KernelVariant:
    prefetch_bytes: int
    hint: int  # 0 none, 1 non-temporal, 2 into every cache level, 3 into L2 (cpu_kernels.cpp's PrefetchHint)
    rows: int = 1  # weight rows streamed at once for one activation row (int4, rows > 1: two 16-row blocks)
    threads: int = 0  # 0: the kernels' whole pool


# "kernel" is the setting tuned on AMD Zen; Intel Sapphire Rapids streams best without the
# non-temporal prefetch (which halves its bandwidth) and with several weight rows at once ("-4r").
# Each also as "-1t" (one thread), for a 2-vCPU VM whose other vCPU is busy.
_VARIANTS = {
    "kernel": KernelVariant(4096, 1),
    "kernel-t0": KernelVariant(1024, 2),
    "kernel-nopf": KernelVariant(0, 0),
    "kernel-t0-4r": KernelVariant(1024, 2, rows=4),
    "kernel-nopf-4r": KernelVariant(0, 0, rows=4),
    # 4 KiB ahead into L2 only: int4 decoded ~10% faster than with "kernel-t0" on the Intel Xeon
    "kernel-l2": KernelVariant(4096, 3),
    "kernel-l2-4r": KernelVariant(4096, 3, rows=4),
    # int8 only, on AVX512-VNNI: the activations rounded to int16, two vpdpwssd per 64 weights (cpu_kernels.cpp);
    # on AVX2 the same sums (the same bits) with four vpmaddwd
    "kernel-vnni-t0": KernelVariant(1024, 2),
    "kernel-vnni-nopf": KernelVariant(0, 0),
    "kernel-vnni-l2": KernelVariant(4096, 3),
    # int8 only, on AVX512-VNNI: the activations rounded to int16 a row and split into two bytes, three vpdpbusd
    # per 64 weights (cpu_kernels.cpp); non-temporal 1 KiB ahead decoded four sequences fastest on an AMD EPYC
    "kernel-bytes": KernelVariant(1024, 1),
    "kernel-bytes-t0": KernelVariant(1024, 2),
    "kernel-bytes-nopf": KernelVariant(0, 0),
    "kernel-bytes-l2": KernelVariant(4096, 3),
    # int8 only, with AMX-INT8: 16-row weight tiles against 24-bit activations split into bytes (cpu_kernels.cpp);
    # "-t0": the next 16-row block fetched ahead as one stream (its distance is always a block)
    "kernel-amx": KernelVariant(0, 0),
    "kernel-amx-t0": KernelVariant(16384, 2),
}
KERNEL_VARIANTS = {
    **_VARIANTS,
    **{f"{name}-1t": KernelVariant(v.prefetch_bytes, v.hint, v.rows, threads=1) for name, v in _VARIANTS.items()},
}
_KIND = {"float32": 0, "int8": 2, "int4": 3}  # cpu_kernels.cpp's WeightKind


def decode_candidates(fmt: str) -> list[str]:
    """The decode paths this machine can run for `fmt`, the default first."""
    kernels = list(KERNEL_VARIANTS) if cpu_kernels_available() else []
    if kernels and torch.ops.fishtts.start_pool(0) == 1:  # the pool's size (set at the kernels' load)
        kernels = [k for k in kernels if not k.endswith("-1t")]
    int16 = bool(kernels) and torch.ops.fishtts.int16_dots_available()  # (built with AVX512-VNNI or AVX2)
    if fmt != "int8" or not int16:
        kernels = [k for k in kernels if "-vnni" not in k]
    if fmt != "int8" or not (kernels and torch.ops.fishtts.vnni_available()):
        kernels = [k for k in kernels if "-bytes" not in k]
    if fmt != "int8" or not (kernels and torch.ops.fishtts.int8_amx_available()):
        kernels = [k for k in kernels if "-amx" not in k]
    packed = ["int8pack"] if fmt == "int8" and hasattr(torch.ops.aten, "_weight_int8pack_mm") else []
    return kernels + ["torch"] + packed


def prefill_candidates(fmt: str) -> list[str]:
    if fmt == "float32":
        return ["float32"]
    # (torch's packed int8 kernel, _weight_int8pack_mm, is a decode candidate only: with 64+ rows it
    # measured 20-40x slower than either matmul here.) "kernel": the decode kernel over all the rows
    # (with the decode path's setting), which reads each quantized weight row once for every row instead
    # of dequantizing the whole matrix per call: 5x faster for int4 at 100 rows on the Intel Xeon.
    # "int8": int8 activations against the int8 weights (torch._int_mm, oneDNN's VNNI / AMX-INT8 code), twice
    # bfloat16's products per cycle: int8's prefill 1.25-1.75x faster on an AMD EPYC with AVX512-VNNI.
    kernel = ["kernel"] if cpu_kernels_available() else []
    int8 = ["int8"] if fmt == "int8" and int8_matmul_available() else []
    return (["bfloat16"] if cpu_has_fast_bfloat16() else []) + ["float32"] + int8 + kernel


@cache
def int8_matmul_available() -> bool:
    """Whether this torch multiplies int8 matrices on the CPU (and gets it right): not every build can."""
    try:
        ones = torch.ones(17, 64, dtype=torch.int8)
        return bool((torch._int_mm(ones, ones.t()) == 64).all())
    except (AttributeError, NotImplementedError, RuntimeError):
        return False


def arithmetic(path: str) -> str:
    """How a decode path computes (its kernel, or the path itself). Paths of one arithmetic differ only
    in prefetch and threads, which change no result bit: one sequence and a batch may take different
    ones of it and a sequence still decodes to the same bits alone or batched."""
    if path.startswith("kernel"):
        return next((f"kernel-{kind}" for kind in ("vnni", "bytes", "amx") if f"-{kind}" in path), "kernel")
    return path


# The paths per format: each model's own table (autotune fills it for the model's shapes), bound to the
# thread that runs the model (its scheduler's: `bound`), and the process's table for threads bound to none
# (the benchmark, tests; autotune leaves the last model's choice there too). A model's arithmetic is then
# its own: loading another model of its format, or timing that one's candidates, no longer changes it
# (the C++ kernels' prefetch and thread settings stay process-wide: they change speed, never a bit).
_chosen: dict[str, dict[str, str]] = {}
_thread = threading.local()


def chosen(fmt: str) -> dict[str, str]:
    """{"decode": path, "batch_decode": path, "prefill": path} in use for `fmt` on this thread: decode steps
    of one sequence, of several, and prompts (the defaults until autotune sets them)."""
    table = getattr(_thread, "table", None)
    table = _chosen if table is None else table
    if fmt not in table:
        first = decode_candidates(fmt)[0]
        table[fmt] = {"decode": first, "batch_decode": first, "prefill": prefill_candidates(fmt)[0]}
    return table[fmt]


def model_table(model: nn.Module) -> dict[str, dict[str, str]]:
    """The model's own paths per format (empty until autotune fills it: the defaults)."""
    table = model.__dict__.get("_fishtts_paths")
    if table is None:
        table = model.__dict__["_fishtts_paths"] = {}
    return table


@contextmanager
def bound(model: nn.Module):
    """This thread computes with `model`'s paths inside the block (a scheduler thread, for its life)."""
    previous = getattr(_thread, "table", None)
    _thread.table = model_table(model)
    try:
        yield
    finally:
        _thread.table = previous


def adopt(model: nn.Module) -> None:
    """`model`'s paths become the process's, for threads bound to no model (the benchmark, tests)."""
    for fmt, entry in model_table(model).items():
        _chosen[fmt] = dict(entry)


def set_paths(fmt: str, decode: str | None = None, prefill: str | None = None, batch_decode: str | None = None) -> None:
    """Use these paths for `fmt` from now on, on this thread (its model's: `bound`; else the process's). A
    new `decode` serves batches too unless `batch_decode` is given, which must compute as `decode` does."""
    current = chosen(fmt)
    if decode is not None or batch_decode is not None:
        one = decode or current["decode"]
        several = batch_decode or decode or current["batch_decode"]
        for path in (one, several):
            if path not in decode_candidates(fmt):
                raise ValueError(f"{path!r} is not a decode path for {fmt} here ({', '.join(decode_candidates(fmt))})")
        if arithmetic(one) != arithmetic(several):
            raise ValueError(f"batch decode path {several!r} does not compute as {one!r}: batches would differ")
        for flag, path in ((0, one), (1, several)):
            variant = KERNEL_VARIANTS.get(path)
            if variant is not None:
                torch.ops.fishtts.set_tuning(
                    _KIND[fmt], variant.prefetch_bytes, variant.hint, variant.threads, variant.rows, flag
                )
        current["decode"], current["batch_decode"] = one, several
    if prefill is not None:
        if prefill not in prefill_candidates(fmt):
            raise ValueError(f"{prefill!r} is not a prefill path for {fmt} here")
        current["prefill"] = prefill


@contextmanager
def using(fmt: str, decode: str | None = None, prefill: str | None = None, batch_decode: str | None = None):
    """These paths for `fmt` inside the block (tests, the benchmark), the previous ones after."""
    previous = dict(chosen(fmt))
    set_paths(fmt, decode, prefill, batch_decode)
    try:
        yield
    finally:
        set_paths(fmt, **previous)


def _kernel(path: str) -> bool:
    return path.startswith("kernel") and cpu_kernels_available()  # (tests switch the kernels off)


# -- the implementations -----------------------------------------------------------------------------
# A decode step makes ~120 of these calls: they stay lean (no reshapes: the kernels take [..., in]).


def linear_float32(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    if few_rows(x) and weight.dtype == torch.float32 and _kernel(chosen("float32")["decode"]):
        y = torch.ops.fishtts.linear_rows(x, weight, None)
        return y if bias is None else y + bias
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (the same parameters and state dict) whose CPU decode rows take the float32 decode path."""

    def forward(self, x: Tensor) -> Tensor:
        return linear_float32(x, self.weight, self.bias)


def linear_int8(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """x @ (weight * scales).T with int8 weight [out, in] and scales [out]."""
    if x.device.type != "cpu" or x.dtype != torch.float32:  # GPU: the original's formula
        return F.linear(x, weight.to(x.dtype)) * scales.to(x.dtype)
    path = chosen("int8")["decode" if has_few_rows(x) else "prefill"]
    if _kernel(path):
        # (widths that are not whole 64-groups take the float-activation kernel)
        kind = arithmetic(path)
        if kind == "kernel-vnni":
            return torch.ops.fishtts.linear_rows_int8_vnni(x, weight, scales)
        if kind == "kernel-bytes":
            return torch.ops.fishtts.linear_rows_int8_bytes(x, weight, scales)
        if kind == "kernel-amx":
            return torch.ops.fishtts.linear_rows_int8_amx(x, weight, scales)
        return torch.ops.fishtts.linear_rows(x, weight, scales)
    if path == "int8pack":  # (decode only)
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.size(-1)), weight, scales.float())
        return y.view(*x.shape[:-1], -1)
    if path == "int8":
        return _int8_matmul(x, weight, scales)
    if path == "bfloat16":
        # int8 values are exact in bfloat16; the activations and sums are rounded to it.
        w = torch.ops.fishtts.int8_to_bfloat16(weight) if cpu_kernels_available() else weight.to(torch.bfloat16)
        return F.linear(x.to(torch.bfloat16), w).to(x.dtype) * scales
    return F.linear(x, weight.to(x.dtype)) * scales.to(x.dtype)  # "torch" / "float32"


# The int8 prefill rounds each row of activations to a step of 1/127 of its largest magnitude: an error of
# (largest / RMS) / (127 * sqrt(12)) of the row's RMS per value, 0.8% for a Gaussian row of 1024. A row whose
# largest value is more than INT8_SPREAD times its RMS (an outlier channel, a SwiGLU product's long tail)
# would lose more than 1.4%: it gets a second int8 digit (the remainder, rounded to 1/254 of the step).
INT8_SPREAD = 6.0


def _int8_matmul(x: Tensor, weight: Tensor, scales: Tensor) -> Tensor:
    """linear_int8 with the activations rounded to int8 per row and exact int32 sums: the int8 dot units
    (VNNI, AMX) do twice bfloat16's work per cycle, and a row's result depends on nothing but that row.
    A row holding NaN or inf comes out NaN or inf."""
    rows = x.reshape(-1, x.size(-1))
    if cpu_kernels_available():  # the same arithmetic, a pass over the rows per step instead of ~12 ops
        q, step, wide, digits, fine = torch.ops.fishtts.quantize_rows_int8(rows, INT8_SPREAD)
        digit_sums = torch._int_mm(digits, weight.t()) if len(wide) else digits.new_empty(0, 0, dtype=torch.int)
        sums = torch._int_mm(q, weight.t())
        y = torch.ops.fishtts.scale_int8_sums(sums, step, scales, wide, digit_sums, fine)
        return y.view(*x.shape[:-1], -1)
    largest = rows.abs().amax(dim=1, keepdim=True)
    step = largest.clamp_min(torch.finfo(torch.float32).tiny) / 127
    q = torch.round(rows / step)
    y = torch.mul(torch._int_mm(q.to(torch.int8), weight.t()), step)
    wide = largest > INT8_SPREAD / rows.size(1) ** 0.5 * torch.linalg.vector_norm(rows, dim=1, keepdim=True)
    wide = wide.view(-1).nonzero().view(-1)
    if len(wide):
        pick = slice(None) if len(wide) == len(rows) else wide  # (all of them: no copies)
        rest = rows[pick] - q[pick] * step[pick]
        fine = step[pick] / 254  # the remainder is within half a step
        digit = torch.round(rest / fine).clamp_(-127, 127).to(torch.int8)
        y.index_add_(0, wide, torch.mul(torch._int_mm(digit, weight.t()), fine))
    return y.mul_(scales).view(*x.shape[:-1], -1)


def linear_int4(x: Tensor, packed: Tensor, scales: Tensor, offsets: Tensor) -> Tensor:
    """x @ dequantize_int4(...).T (quantize.py's layout)."""
    from .quantize import dequantize_int4

    if x.device.type == "cpu" and x.dtype == torch.float32:
        path = chosen("int4")["decode" if has_few_rows(x) else "prefill"]
        if _kernel(path):
            return torch.ops.fishtts.linear_rows_int4(x, packed, scales, offsets)
        if path == "bfloat16":
            if cpu_kernels_available():
                w = torch.ops.fishtts.int4_to_bfloat16(packed, scales, offsets)
            else:
                w = dequantize_int4(packed, scales, offsets, torch.bfloat16)
            return F.linear(x.to(torch.bfloat16), w).to(x.dtype)
    return F.linear(x, dequantize_int4(packed, scales, offsets, x.dtype))
