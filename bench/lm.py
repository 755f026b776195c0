"""LM speed per weight format: prefill tokens/s, decode tokens/s, and the memory-bandwidth floor."""

from __future__ import annotations

import copy
import statistics
import time
from contextlib import nullcontext

import torch

from core.lm import SamplingParams, generate, paths
from core.lm.autotune import model_paths, tune_model
from core.lm.compile import compile_decode, uses_static_cache
from core.lm.model import Transformer
from core.lm.quantize import QUANT_MODES, is_quantized, quantize_model

from .measure import ReadBandwidth


def bytes_per_step(model: Transformer) -> int:
    """Weight bytes one decode step reads: everything but the embedding table (5 rows of it are read)."""
    tensors = [t for name, t in model.state_dict().items() if not name.startswith("embeddings.")]
    return sum(t.numel() * t.element_size() for t in tensors)


def build_variant(name: str, base: Transformer) -> Transformer:
    """float32 | bfloat16 | int8 | int4 (weight-only, core/lm/quantize.py), optionally "+compile" of the decode
    step; its paths chosen by the autotuner as at load, or ":PATH" names the decode path (e.g. float32:torch,
    int8:kernel: what the autotuner chose from, measured in the same run; ":PATH/BATCH_PATH" one for
    batches too, e.g. int8:kernel-vnni-nopf/kernel-vnni-t0)."""
    name = name.split(":")[0]
    fmt, _, extra = name.partition("+")
    if extra not in ("", "compile"):
        raise SystemExit(f"unknown variant suffix {extra!r}")
    if fmt == "float32" and not extra and base.output.weight.dtype == torch.float32:
        tune_model(base)
        return base  # generation keeps no state but the caches it clears, so no copy is needed
    model = copy.deepcopy(base)
    if fmt in QUANT_MODES:
        quantize_model(model, fmt)
    elif fmt in ("bfloat16", "float32"):
        model = model.to(getattr(torch, fmt))
    else:
        raise SystemExit(f"unknown variant {name!r}")
    if model.output.weight.device.type == "cpu":
        tune_model(model)
    if extra == "compile":
        compile_decode(model)
    return model


def static_cache_for(model: Transformer) -> bool:
    """As the engine decides: a compiled step on CUDA runs over the static cache (fixed shapes)."""
    return getattr(model, "compiled_decode", None) is not None and uses_static_cache(model)


def random_prompt(model: Transformer, length: int, seed: int = 0) -> torch.Tensor:
    """A text-only prompt [1 + C, length]: random text tokens, no codes."""
    cfg = model.config
    prompt = torch.zeros(1 + cfg.num_codebooks, length, dtype=torch.int)
    prompt[0] = torch.randint(3, cfg.vocab_size, (length,), generator=torch.Generator().manual_seed(seed))
    return prompt


def timed_generate(model: Transformer, prompt: torch.Tensor, new: int, num_samples: int = 1) -> tuple[float, float]:
    """(prefill seconds, decode steps/s) of one generation of `new` frames (stops ignored)."""
    model.clear_caches()
    marks = []
    start = time.perf_counter()
    generate(
        model,
        prompt,
        max_new_tokens=new,
        eos_token_id=2,
        params=SamplingParams(),
        num_samples=num_samples,
        ignore_stop=True,
        fast_sampling=is_quantized(model),
        static_cache=static_cache_for(model),
        progress=lambda: marks.append(time.perf_counter()),
    )
    # The first progress mark comes after prefill and its sampled frame; the rest are decode steps.
    return marks[0] - start, (len(marks) - 1) / (marks[-1] - marks[0])


def used_paths(name: str, model: Transformer) -> dict:
    """The paths the variant's timings ran: the model's own (autotuned), but a forced one's decode paths."""
    if model.output.weight.device.type != "cpu":
        return {}
    table = model_paths(model)
    forced = _forced(name)
    if forced is not None:  # (forced_path sets the unbound table, which model_paths does not show)
        fmt, decode, batch = forced
        table[fmt] = {**table[fmt], "decode": decode, "batch_decode": batch or decode}
    return table


def build_variants(
    names: list[str], base: Transformer, prompt: torch.Tensor, log=print, shapes: tuple[tuple[int, int], ...] = ()
) -> tuple[dict, dict]:
    """Variant name -> model, and -> setup seconds (copy, quantize, and a warm-up that compiles). A compiled
    variant warms up with each (new tokens, sequences) of `shapes`, the timed runs' own: each cache size
    is another graph to compile, which the timed runs must not wait for."""
    models, setup = {}, {}
    for name in names:
        start = time.perf_counter()
        models[name] = build_variant(name, base)
        with forced_path(name, models[name]):
            for new, sequences in (shapes if "+compile" in name else ()) or ((3, 1),):
                timed_generate(models[name], prompt, new, sequences)
        setup[name] = time.perf_counter() - start
        log(f"  {name}: ready in {setup[name]:.1f} s")
    return models, setup


def forced_path(name: str, model: Transformer):
    """paths.using(...) for a "FORMAT:PATH" variant (PATH for one sequence and batches) or
    "FORMAT:PATH/BATCH_PATH" (two settings of one kernel), else nothing."""
    forced = _forced(name)
    if forced is None or model.output.weight.device.type != "cpu":
        return nullcontext()
    fmt, decode, batch = forced
    return paths.using(fmt, decode=decode, batch_decode=batch or None)


def _forced(name: str) -> tuple[str, str, str] | None:
    """(format, decode path, batch path or "") that a "FORMAT:PATH[/BATCH_PATH]" variant names."""
    if ":" not in name:
        return None
    decode, _, batch = name.split(":")[1].partition("/")
    return name.split("+")[0].split(":")[0], decode, batch


def bench_lm(
    models: dict[str, Transformer],
    setup: dict[str, float],
    prompt: torch.Tensor,
    new: int,
    runs: int,
    bandwidth: ReadBandwidth,
    num_samples: tuple[int, ...] = (1,),
) -> list[dict]:
    """One row per (variant, batch). Variants run interleaved in every round, so a busy machine slows
    them alike and their ratios stay honest; the warm-up was the build's. Each run's floor is the read
    bandwidth beside it (the VM's moves within minutes); a row's share of the floor is the median of its
    runs' shares."""
    results = {(v, n): [] for v in models for n in num_samples}
    for _ in range(runs):
        for n in num_samples:
            for name, model in models.items():
                with forced_path(name, model):
                    timing, floor = bandwidth.around(lambda m=model, n=n: timed_generate(m, prompt, new, n))
                results[name, n].append((*timing, floor))
    rows = []
    for (name, n), timings in results.items():
        step_bytes = bytes_per_step(models[name])
        prefill = statistics.median(t[0] for t in timings)
        rate = statistics.median(t[1] for t in timings)
        floor = statistics.median(t[2] for t in timings)
        rows.append(
            dict(
                variant=name,
                num_samples=n,
                prompt_tokens=prompt.shape[1],
                new_tokens=new,
                prefill_s=round(prefill, 3),
                prefill_tokens_per_s=round(prompt.shape[1] / prefill, 1),  # (one prefill, copied to the n slots)
                tokens_per_s=round(rate * n, 2),
                steps_per_s=round(rate, 2),
                weights_gb=round(step_bytes / 1e9, 3),
                weight_gb_per_s=round(step_bytes * rate / 1e9, 2),
                bandwidth_gb_per_s=round(floor / 1e9, 1),
                floor_steps_per_s=round(floor / step_bytes, 1),
                fraction_of_floor=round(statistics.median(t[1] * step_bytes / t[2] for t in timings), 3),
                setup_s=round(setup[name], 1),
                paths=used_paths(name, models[name]),
            )
        )
    return rows
