"""LM decode speed with official-size random weights (run by hand; numbers go in notes).

    python bench/bench_lm.py [--prompt 100] [--new 64] [--runs 5] [--variants float32,int8,int8+compile]
                             [--num-samples 1,4] [--device cpu]

Variants: float32 | bfloat16 | int8 (weight-only, see core/lm/quantize.py; samples with
fast_sampling as the engine does for it), each optionally "+compile" (torch.compile of the decode
step; setup time includes the compile). All variants run
interleaved in every round, so a busy machine slows them alike and the ratios stay honest.
Prints prefill time, decode tokens/s (median of rounds), and the weight bandwidth achieved against
the machine's bandwidth measured in the same run, as gpt-fast does, so the numbers check themselves.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from core.device import resolve_device
from core.lm import SamplingParams, generate, load_lm_config
from core.lm.compile import compile_decode
from core.lm.model import Transformer
from core.lm.quantize import is_quantized, quantize_model_int8


def random_official_lm(device: torch.device, dtype: torch.dtype, seed: int = 0) -> Transformer:
    config = load_lm_config("text2semantic_finetune").model
    with torch.device("meta"):
        model = Transformer(config)
    model = model.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0, 0.02, generator=gen)
    model.init_buffers(device)
    return model.to(dtype).eval().requires_grad_(False)


def bytes_per_step(model: Transformer) -> int:
    """Weight bytes one decode step reads: everything but the embedding table (5 rows of it are read)."""
    tensors = [t for name, t in model.state_dict().items() if not name.startswith("embeddings.")]
    return sum(t.numel() * t.element_size() for t in tensors)


def memory_bandwidth(device: torch.device) -> float:
    """Read bandwidth in bytes/s: best time to sum 512 MB (the least disturbed run; a floor wants the best)."""
    x = torch.ones(128 * 2**20, device=device)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        x.sum().item()
        times.append(time.perf_counter() - start)
    return x.numel() * 4 / min(times)


def build_variant(name: str, base: Transformer) -> Transformer:
    fmt, _, extra = name.partition("+")
    model = copy.deepcopy(base)
    if fmt == "int8":
        quantize_model_int8(model)
    elif fmt in ("bfloat16", "float32"):
        model = model.to(getattr(torch, fmt))
    else:
        raise SystemExit(f"unknown variant {name!r}")
    if extra == "compile":
        compile_decode(model)
    elif extra:
        raise SystemExit(f"unknown variant suffix {extra!r}")
    return model


def timed_generate(model: Transformer, prompt: torch.Tensor, new: int, num_samples: int) -> tuple[float, float]:
    """(prefill seconds, decode steps/s) of one generation."""
    model.clear_caches()
    marks = []
    start = time.perf_counter()
    generate(model, prompt, max_new_tokens=new, eos_token_id=2, params=SamplingParams(), num_samples=num_samples,
             ignore_stop=True, fast_sampling=is_quantized(model), progress=lambda: marks.append(time.perf_counter()))
    return marks[0] - start, (len(marks) - 1) / (marks[-1] - marks[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=100, help="prompt length in tokens")
    parser.add_argument("--new", type=int, default=64, help="frames to generate")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--device", default=None)
    parser.add_argument("--variants", default="float32,int8", help="comma list, e.g. float32,int8,int8+compile")
    parser.add_argument("--num-samples", default="1", help="comma list of batch sizes, e.g. 1,4")
    args = parser.parse_args()

    device = resolve_device(args.device)
    base = random_official_lm(device, torch.float32)
    cfg = base.config
    prompt = torch.zeros(1 + cfg.num_codebooks, args.prompt, dtype=torch.int)
    prompt[0] = torch.randint(3, cfg.vocab_size, (args.prompt,))
    bandwidth = memory_bandwidth(device)
    print(f"device {device}, threads {torch.get_num_threads()}, read bandwidth {bandwidth / 1e9:.1f} GB/s")

    variants, setup = {}, {}
    for name in args.variants.split(","):
        start = time.perf_counter()
        variants[name] = build_variant(name, base)
        timed_generate(variants[name], prompt, 3, 1)  # warm-up; compiles the decode step
        setup[name] = time.perf_counter() - start
        print(f"{name}: ready in {setup[name]:.1f} s", flush=True)
    del base
    sizes = [int(n) for n in args.num_samples.split(",")]
    results = {(v, n): [] for v in variants for n in sizes}
    for _ in range(args.runs):
        for n in sizes:
            for name, model in variants.items():
                results[name, n].append(timed_generate(model, prompt, args.new, n))

    rows = []
    for (name, n), runs in results.items():
        model = variants[name]
        step_bytes = bytes_per_step(model)
        rate = statistics.median(r[1] for r in runs)
        rows.append(dict(variant=name, num_samples=n, prefill_s=round(statistics.median(r[0] for r in runs), 3),
                         tokens_per_s=round(rate * n, 2), steps_per_s=round(rate, 2),
                         weights_gb=round(step_bytes / 1e9, 3), weight_gb_per_s=round(step_bytes * rate / 1e9, 1),
                         floor_steps_per_s=round(bandwidth / step_bytes, 1), setup_s=round(setup[name], 1)))
        r = rows[-1]
        print(f"{name:>16} x{n}: prefill {r['prefill_s']:.3f} s, decode {r['tokens_per_s']:6.2f} tokens/s "
              f"({r['steps_per_s']:.2f} steps/s, {r['weight_gb_per_s']} GB/s of {r['weights_gb']} GB weights; "
              f"floor {r['floor_steps_per_s']} steps/s), setup+warm-up {r['setup_s']} s")
    print(json.dumps(dict(bandwidth_gb_per_s=round(bandwidth / 1e9, 1), threads=torch.get_num_threads(), results=rows)))


if __name__ == "__main__":
    main()
