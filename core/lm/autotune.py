"""Pick each weight format's fastest decode and prefill path (paths.py) by timing them on this machine.

At load: every decode candidate streams the first TIMED_BYTES of the model's linears with one activation
row (a proxy that sorts out the slow ones); the fastest STEP_CONTENDERS are timed in the model's own
decode steps (`model.decode_probe`) of one sequence, the fastest few of those and their arithmetics' other
prefetch settings of BATCH_ROWS (the scheduler's concurrent requests). The arithmetic whose best one-row
and batch steps have the smallest geometric mean wins, with its fastest setting for each
(paths.arithmetic: settings change no bit, so a sequence decodes the same alone or batched). Every
prefill candidate multiplies one layer's weights by PREFILL_ROWS rows, and each prompt attention
candidate attends over PREFILL_ROWS positions of the model's heads. The fastest wins.
Two to four seconds a format at official size (moving the weights to huge pages included), once per CPU model,
thread count, torch version, kernel source, timing method, weight shapes and candidate list: the choice is kept in
~/.cache/fishtts/lm_paths.json ($XDG_CACHE_HOME respected; an unreadable file is ignored and rewritten).
FISHTTS_AUTOTUNE=0 skips it (the defaults: the kernels as tuned on AMD Zen, bfloat16 prefill where fast).

All candidates give the same results within the format's tolerance (tests/test_lm_paths.py), so the
choice changes only speed. On a busy machine the timings are noisy; the best of a few runs is used.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn

from ..tuning import cpu_info, machine_key, read_cache, write_cache
from . import paths, prefill_attention
from .kernels import cpu_kernels_available, move_to_huge_pages, single_threaded_torch, sources_digest
from .quantize import weight_format

log = logging.getLogger(__name__)

# model.decode_probe(rows, position): a context giving a callable that runs one decode step of `rows`
# sequences (core/lm/model.py, core/s1/lm.py)
DecodeProbe = Callable[[int, int], AbstractContextManager[Callable[[], object]]]

PREFILL_ROWS = 256  # a prompt with a reference voice: 5-10 s of codes (~21.5 a second) and its text
BATCH_ROWS = 4  # sequences decoded together: the scheduler's concurrent requests
WARM_UP_BYTES = 48 << 20  # weights a proxy candidate streams to warm up (and to sort out the slow ones)
TIMED_BYTES = 160 << 20  # and in each timing: beyond the last-level cache, so from memory
# The proxy (linears called one by one) misranks paths whose speed depends on what a real step does
# around them: on an AMD EPYC it put int8's "kernel-vnni-t0" 12% ahead of "kernel-vnni-nopf", which
# decodes one sequence 18% faster (76 vs 64 steps/s) inside the fused layers; so the last word is
# the model's own steps'.
STEP_CONTENDERS = 4  # the proxy's fastest, timed in decode steps of one sequence
BATCH_CONTENDERS = 3  # the fastest of those (and their other prefetch settings), with BATCH_ROWS
STEP_BUDGET = 1.0  # seconds of steps for each: a large model's slow steps time fewer contenders (two at least)
STEP_POSITION = 128  # where the timed steps decode (every candidate attends over the same cache)
# A timing of steps lasts this long at least (their mean): a single short step's time wanders by ~10% on a
# shared VM, and the best of two single steps put int8's "kernel-amx-t0" ahead of "kernel-amx" (14.46 vs
# 14.81 ms), which decodes 7% faster (13.1 vs 14.1 ms, medians of 30 timings of three steps; Intel Xeon).
STEP_TIMING_SECONDS = 0.03
MAX_STEPS_PER_TIMING = 8
RUNS = 2
KERNEL_MARGIN = 0.05  # see _prefer_kernels
GIVE_UP = 2.0  # a candidate whose two warm-ups both take this many times the best is not timed further
METHOD = 8  # how the timings are taken: a choice cached by another method is measured again
CACHE_NAME = "lm_paths.json"


def _source_hash() -> str:
    """The kernels' sources, or "none" where they are not built."""
    return sources_digest() if cpu_kernels_available() else "none"


def _cache_key(*parts: str) -> str:
    """This machine, kernel source and timing method, then what was timed."""
    return "|".join([*machine_key(), f"kernels={_source_hash()}", f"method={METHOD}", *parts])


def _key(fmt: str, layers: list[nn.Module]) -> str:
    shapes = sorted({(m.out_features, m.in_features) for m in layers})
    # a new candidate (a kernel setting, a prefill path) is measured, not skipped for a cached choice
    return _cache_key(fmt, str(shapes), ",".join(paths.decode_candidates(fmt) + paths.prefill_candidates(fmt)))


def _timed_in_turns(candidates: list[str], use, warm_up, timed) -> dict[str, float]:
    """Each candidate's best of RUNS timings, after a warm-up round (first touch, lazy packing) after
    which one GIVE_UP times slower than the best sits out (keeping its better warm-up time), if a second
    warm-up is no faster: one slow pass may be a shared VM's hiccup (torch's float32 path once measured
    2.2 GB/s and sat out on an AMD EPYC, 11.5-13.9 GB/s in every other tuning). The candidates take
    turns within each round: on a shared VM the machine's speed drifts, and one after another, whichever
    was timed in a quiet moment would win. `use(path)` switches to a candidate; `warm_up()` and `timed()` run the
    work and return its cost (seconds, or seconds per GB)."""
    best = {}
    for path in candidates:
        use(path)
        best[path] = warm_up()

    def too_slow(path: str) -> bool:
        return best[path] > GIVE_UP * min(best.values())

    for path in filter(too_slow, candidates):
        use(path)
        best[path] = min(best[path], warm_up())
    alive = [path for path in candidates if not too_slow(path)]
    best.update(dict.fromkeys(alive, float("inf")))
    for _ in range(RUNS):
        for path in alive:
            use(path)
            best[path] = min(best[path], timed())
    return best


def _layer_bytes(layer: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in layer.buffers()) + sum(
        p.numel() * p.element_size() for p in layer.parameters()
    )


def _first_layers(layers: list[nn.Module], size: int) -> list[nn.Module]:
    """The first linears in model order, `size` bytes of them or more (all if fewer)."""
    total = 0
    for count, layer in enumerate(layers, 1):
        total += _layer_bytes(layer)
        if total >= size:
            return layers[:count]
    return layers


def _decode_seconds_per_gb(fmt: str, candidates: list[str], layers: list[nn.Module], rows: dict) -> dict[str, float]:
    """Each candidate's seconds per GB of weights for passes over the format's first TIMED_BYTES of
    linears (from memory, as a decode step reads them: more than the last-level cache), warmed up on
    the first WARM_UP_BYTES. Every timing reads the same weights: a different chunk of the model per
    candidate gave each a different mix of shapes, and the ranking changed from run to run."""

    def timing(size: int):
        timed = _first_layers(layers, size)
        gigabytes = sum(_layer_bytes(m) for m in timed) / 1e9

        def seconds_per_gb() -> float:
            start = time.perf_counter()
            for m in timed:
                m(rows[m.in_features])
            return (time.perf_counter() - start) / gigabytes

        return seconds_per_gb

    return _timed_in_turns(
        candidates, lambda path: paths.set_paths(fmt, decode=path), timing(WARM_UP_BYTES), timing(TIMED_BYTES)
    )


def _decode_step_seconds(fmt: str, candidates: list[str], probe: DecodeProbe, rows: int) -> dict[str, float]:
    """Seconds of one of the model's own decode steps of `rows` sequences (the best of RUNS means of the
    steps in STEP_TIMING_SECONDS, after a warm-up) for the first of `candidates` (fastest first) that fit
    in STEP_BUDGET, at least two."""
    with probe(rows, STEP_POSITION) as step:
        steps = 1

        def seconds() -> float:
            start = time.perf_counter()
            for _ in range(steps):
                step()
            return (time.perf_counter() - start) / steps

        paths.set_paths(fmt, decode=candidates[0])
        first = seconds()  # (a step's time sizes the timings and the field)
        steps = max(1, min(MAX_STEPS_PER_TIMING, math.ceil(STEP_TIMING_SECONDS / max(first, 1e-9))))
        fit = max(2, int(STEP_BUDGET / ((1 + RUNS) * steps * first)))
        return _timed_in_turns(candidates[:fit], lambda path: paths.set_paths(fmt, decode=path), seconds, seconds)


def _batch_contenders(one_row: dict[str, float], candidates: list[str]) -> list[str]:
    """The fastest BATCH_CONTENDERS one-row steps, then their arithmetics' other prefetch settings on the
    same threads: a batch's best prefetch is often not one row's (AMD EPYC, int8's bytes kernel: four
    sequences 16.9 ms a step fetching 1 KiB ahead, 22.5 ms without, the one-row winner). Not timed: other
    thread counts (a batch's extra work wants them no less than one row does) and weight rows at once
    (a batch does not use them)."""
    fastest = sorted(one_row, key=one_row.get)[:BATCH_CONTENDERS]
    variants = paths.KERNEL_VARIANTS
    setups = {(paths.arithmetic(k), variants[k].threads) for k in fastest if k in variants}
    others = [
        c
        for c in candidates
        if c in variants
        and c not in fastest
        and variants[c].rows == 1
        and (paths.arithmetic(c), variants[c].threads) in setups
    ]
    return fastest + others


def _measure_decode(fmt: str, candidates: list[str], layers: list[nn.Module], probe: DecodeProbe) -> dict:
    """The linears' proxy sorts out the slow candidates; the fastest STEP_CONTENDERS are timed in whole
    decode steps of one sequence, the fastest BATCH_CONTENDERS of those and their arithmetics' other
    prefetch settings (_batch_contenders) in steps of BATCH_ROWS. The arithmetic (paths.arithmetic) whose
    best one-row and best batch steps have the smallest geometric mean wins (both must compute alike, or a
    sequence would decode to other bits batched), with its fastest setting for each."""
    one_rows = {m.in_features: torch.randn(1, m.in_features) for m in layers}
    proxy = _decode_seconds_per_gb(fmt, candidates, layers, one_rows)
    one_row = _decode_step_seconds(fmt, sorted(candidates, key=proxy.get)[:STEP_CONTENDERS], probe, 1)
    batch = _decode_step_seconds(fmt, _batch_contenders(one_row, candidates), probe, BATCH_ROWS)

    def fastest(timed: dict[str, float], kind: str) -> str:
        return min((k for k in timed if paths.arithmetic(k) == kind), key=timed.get)

    kinds = {paths.arithmetic(k) for k in batch}
    kind = _prefer_kernels({k: (one_row[fastest(one_row, k)] * batch[fastest(batch, k)]) ** 0.5 for k in kinds})
    return {
        "decode": fastest(one_row, kind),
        "batch_decode": fastest(batch, kind),
        "one_row_step_ms": {k: round(v * 1e3, 2) for k, v in one_row.items()},
        "batch_step_ms": {k: round(v * 1e3, 2) for k, v in batch.items()},
        "proxy_gb_per_s": {k: round(1 / v, 1) for k, v in proxy.items()},
    }


@torch.inference_mode()
def _measure(fmt: str, layers: list[nn.Module], prompt_layers: list[nn.Module], probe: DecodeProbe) -> dict:
    candidates = paths.decode_candidates(fmt)
    if len(candidates) == 1:
        decode = {"decode": candidates[0], "batch_decode": candidates[0]}
    else:
        with single_threaded_torch():  # as a decode step runs
            decode = _measure_decode(fmt, candidates, layers, probe)
    # The "kernel" prefill runs with the batch decode setting (threads, prefetch): time it with the winner's.
    paths.set_paths(fmt, decode=decode["decode"], batch_decode=decode["batch_decode"])
    one_layer = list({(m.out_features, m.in_features): m for m in prompt_layers}.values())  # each shape once
    batch = {m.in_features: torch.randn(PREFILL_ROWS, m.in_features) for m in one_layer}

    def prefill_seconds() -> float:
        start = time.perf_counter()
        for m in one_layer:
            m(batch[m.in_features])
        return time.perf_counter() - start

    candidates = paths.prefill_candidates(fmt)
    if len(candidates) == 1:  # float32: nothing to choose
        prefill_times = {candidates[0]: 0.0}
        paths.set_paths(fmt, prefill=candidates[0])
    else:
        prefill_times = _timed_in_turns(
            candidates, lambda path: paths.set_paths(fmt, prefill=path), prefill_seconds, prefill_seconds
        )
    return {
        **decode,
        "prefill": min(prefill_times, key=prefill_times.get),
        "prefill_ms": {k: round(v * 1e3, 2) for k, v in prefill_times.items()},
    }


def _prefer_kernels(times: dict[str, float]) -> str:
    """The fastest path, but a kernel within KERNEL_MARGIN of it wins: the kernels are batch-invariant
    (a sequence decodes bit for bit the same alone or batched), torch's matmuls only within rounding."""
    best = min(times, key=times.get)
    kernels = {k: v for k, v in times.items() if k.startswith("kernel")}
    if kernels and not best.startswith("kernel"):
        fastest_kernel = min(kernels, key=kernels.get)
        if kernels[fastest_kernel] <= times[best] * (1 + KERNEL_MARGIN):
            return fastest_kernel
    return best


def model_formats(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Weight format -> the model's linears of that format, in model order."""
    found: dict[str, list[nn.Module]] = {}
    for module in model.modules():
        fmt = weight_format(module)
        if fmt is not None:
            found.setdefault(fmt, []).append(module)
    return found


def _prompt_layers(model: nn.Module, layers: list[nn.Module]) -> list[nn.Module]:
    """The linears a prefill runs over every prompt position: all but the output head, which takes only
    the last position's rows (a decode path's work). Timed with the prompt's rows, the head (the largest
    matrix) outweighed the rest, and its widened copies' fresh memory made the matmuls' timings erratic:
    int4 on the Intel Xeon once chose the kernel for prefill, 4x slower than bfloat16."""
    head = getattr(model, "output", None)
    return [m for m in layers if m is not head] or layers


def tune_model(model: nn.Module) -> dict[str, dict[str, str]]:
    """Choose (measure, or take from the cache) the paths for every weight format of a CPU model; first
    move its linears' weights to huge pages (kernels.move_to_huge_pages)."""
    formats = model_formats(model)
    if not formats or next(iter(formats.values()))[0].weight.device.type != "cpu":
        return {}
    cpu_kernels_available()  # build or load the kernels now (their absence changes the candidates)
    move_to_huge_pages(m for m in model.modules() if weight_format(m) is not None)  # in the order a step reads them
    if os.environ.get("FISHTTS_AUTOTUNE", "1") == "0":
        return model_paths(model)
    cache = read_cache(CACHE_NAME)
    changed = False
    with paths.bound(model):  # its own table: a served model of the same format keeps its paths meanwhile
        for fmt, layers in formats.items():
            key = _key(fmt, layers)
            entry = cache.get(key)
            valid = (
                isinstance(entry, dict)
                and entry.get("decode") in paths.decode_candidates(fmt)
                and entry.get("batch_decode") in paths.decode_candidates(fmt)
                and paths.arithmetic(entry["batch_decode"]) == paths.arithmetic(entry["decode"])
                and entry.get("prefill") in paths.prefill_candidates(fmt)
            )
            if not valid:
                start = time.perf_counter()
                entry = _measure(fmt, layers, _prompt_layers(model, layers), model.decode_probe)
                entry["tuned_s"] = round(time.perf_counter() - start, 3)
                cache[key], changed = entry, True
            paths.set_paths(fmt, decode=entry["decode"], batch_decode=entry["batch_decode"], prefill=entry["prefill"])
            log.info(
                "LM %s paths on %s: decode %s (batched %s), prefill %s (%s)",
                fmt,
                cpu_info()["model"],
                entry["decode"],
                entry["batch_decode"],
                entry["prefill"],
                f"measured in {entry['tuned_s']} s" if not valid else "cached",
            )
    paths.adopt(model)
    changed |= _tune_attention(model, cache)
    if changed:
        write_cache(CACHE_NAME, cache)
    return model_paths(model)


def _attention_layout(model: nn.Module) -> prefill_attention.Layout | None:
    """The heads of the model's prompt attention (None: a model without one through prefill_attention.py)."""
    return getattr(model, "prompt_attention_layout", None)


def _attention_key(layout: prefill_attention.Layout) -> str:
    return _cache_key("prefill_attention", str(layout), ",".join(prefill_attention.candidates(layout)))


def _measure_attention(layout: prefill_attention.Layout) -> dict:
    """Each candidate's time for a prompt of PREFILL_ROWS positions with these heads."""
    n_head, n_kv_head, head_dim = layout
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, n_head, PREFILL_ROWS, head_dim, generator=gen)
    k, v = (torch.randn(1, n_kv_head, PREFILL_ROWS, head_dim, generator=gen) for _ in range(2))
    chosen: list[str] = []

    def seconds() -> float:
        start = time.perf_counter()
        prefill_attention.causal_attention(q, k, v, path=chosen[-1])
        return time.perf_counter() - start

    times = _timed_in_turns(prefill_attention.candidates(layout), chosen.append, seconds, seconds)
    return {"path": min(times, key=times.get), "ms": {k: round(v * 1e3, 3) for k, v in times.items()}}


def _tune_attention(model: nn.Module, cache: dict) -> bool:
    """Choose the prompt attention for the model's heads (measure, or take from the cache); True if the
    cache changed."""
    layout = _attention_layout(model)
    if layout is None or len(prefill_attention.candidates(layout)) == 1:
        return False
    key = _attention_key(layout)
    entry = cache.get(key)
    valid = isinstance(entry, dict) and entry.get("path") in prefill_attention.candidates(layout)
    if not valid:
        with torch.inference_mode():
            entry = cache[key] = _measure_attention(layout)
    prefill_attention.set_path(layout, entry["path"])
    log.info("LM prompt attention for %s heads: %s (%s)", layout, entry["path"], entry["ms"] if not valid else "cached")
    return not valid


def model_paths(model: nn.Module) -> dict[str, dict[str, str]]:
    """The paths in use for each weight format the model holds (for /v1/health and the benchmark), with
    its prompt attention's."""
    layout = _attention_layout(model)
    attention = {} if layout is None else {"prefill_attention": prefill_attention.chosen(layout)}
    with paths.bound(model):
        return {fmt: {**paths.chosen(fmt), **attention} for fmt in model_formats(model)}
