"""LM decode speed with official-size random weights (run by hand; numbers go in notes).

    python bench/bench_lm.py [--prompt 100] [--new 64] [--runs 3] [--device cpu] [--dtype float32]

Prints prefill time, decode tokens/s (median of runs) and the achieved weight bandwidth, as
gpt-fast does, so the number checks itself against the machine's memory bandwidth.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from core.device import lm_dtype, resolve_device
from core.lm import SamplingParams, generate, load_lm_config
from core.lm.model import Transformer


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=100, help="prompt length in tokens")
    parser.add_argument("--new", type=int, default=64, help="frames to generate")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default=None, help="float32 / bfloat16 / float16")
    parser.add_argument("--num-samples", type=int, default=1)
    args = parser.parse_args()

    device = resolve_device(args.device)
    dtype = lm_dtype(device, precision=args.precision)
    if args.precision == "bfloat16" and device.type == "cpu":
        dtype = torch.bfloat16  # allowed here to measure it; the engine uses float32 on CPU
    model = random_official_lm(device, dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    cfg = model.config
    prompt = torch.zeros(1 + cfg.num_codebooks, args.prompt, dtype=torch.int)
    prompt[0] = torch.randint(3, cfg.vocab_size, (args.prompt,))
    params = SamplingParams()
    print(f"device {device}, dtype {dtype}, threads {torch.get_num_threads()}, weights {weight_bytes / 1e9:.2f} GB")

    rates, prefills = [], []
    for run in range(args.runs + 1):  # the first run warms up
        model.clear_caches()
        start = time.perf_counter()
        marks = []
        generate(model, prompt, max_new_tokens=args.new, eos_token_id=2, params=params, num_samples=args.num_samples,
                 ignore_stop=True, progress=lambda: marks.append(time.perf_counter()))
        if device.type == "cuda":
            torch.cuda.synchronize()
        prefill = marks[0] - start
        decode_rate = (len(marks) - 1) / (marks[-1] - marks[0])
        if run:
            rates.append(decode_rate)
            prefills.append(prefill)
    rate = statistics.median(rates)
    print(f"prefill {args.prompt} tokens: {statistics.median(prefills):.3f} s (median)")
    print(f"decode: {rate:.2f} steps/s x {args.num_samples} = {rate * args.num_samples:.2f} tokens/s "
          f"(runs: {', '.join(f'{r:.2f}' for r in rates)}), {weight_bytes * rate / 1e9:.2f} GB/s of weights")


if __name__ == "__main__":
    main()
