"""LM decode speed with official-size random weights, with batch sizes (`python -m bench` is the full benchmark).

    python bench/bench_lm.py [--prompt 100] [--new 64] [--runs 5] [--variants float32,int8,int8+compile]
                             [--num-samples 1,4] [--device cpu]

Variants: float32 | bfloat16 | int8 (weight-only, see core/lm/quantize.py; samples with
fast_sampling as the engine does for it), each optionally "+compile" (torch.compile of the decode
step; setup time includes the compile). All variants run interleaved in every round, so a busy
machine slows them alike and the ratios stay honest. Prints prefill time, decode tokens/s (median
of rounds), and the weight bandwidth achieved against the machine's bandwidth measured in the same
run, as gpt-fast does, so the numbers check themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lm import bench_lm, build_variants, bytes_per_step, build_variant, random_prompt  # noqa: E402,F401
from bench.measure import memory_bandwidth  # noqa: E402
from bench.models import random_official_lm  # noqa: E402,F401
from core.device import resolve_device  # noqa: E402


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
    prompt = random_prompt(base, args.prompt)
    bandwidth = memory_bandwidth(device)
    print(f"device {device}, threads {torch.get_num_threads()}, read bandwidth {bandwidth / 1e9:.1f} GB/s")
    models, setup = build_variants(args.variants.split(","), base, prompt)
    del base
    sizes = tuple(int(n) for n in args.num_samples.split(","))
    rows = bench_lm(models, setup, prompt, args.new, args.runs, bandwidth, sizes)
    for r in rows:
        print(f"{r['variant']:>16} x{r['num_samples']}: prefill {r['prefill_s']:.3f} s, decode {r['tokens_per_s']:6.2f} "
              f"tokens/s ({r['steps_per_s']:.2f} steps/s, {r['weight_gb_per_s']} GB/s of {r['weights_gb']} GB weights; "
              f"floor {r['floor_steps_per_s']} steps/s), setup+warm-up {r['setup_s']} s")
    print(json.dumps(dict(bandwidth_gb_per_s=round(bandwidth / 1e9, 1), threads=torch.get_num_threads(), results=rows)))


if __name__ == "__main__":
    main()
