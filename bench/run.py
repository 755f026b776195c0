"""`python -m bench`: speed of every stage with official-size random-weight models, one table + one JSON line.

    python -m bench [--only lm,vqgan,e2e] [--runs 3] [--device cpu] [--variants float32,int8] [--compile] [--tiny]

Measured in this run: device and threads; memory read bandwidth and the decode floor it sets per LM
weight format (weight bytes read per token / bandwidth, as gpt-fast reports); LM prefill tokens/s
(100-token prompt) and decode tokens/s (64 new tokens) per format; VQGAN encode and decode of 10 s of
audio; end-to-end RTF of one reference-prompted sentence per format (10 s reference encoded, 64 frames
generated with stops ignored, decoded); peak RSS. Each number is the median of --runs after a warm-up.
`--compile` adds int8+compile (its compile takes 15-95 s on CPU). `--tiny` uses tiny models (tests).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from core.device import resolve_device

from .e2e import bench_e2e, make_engine
from .lm import bench_lm, build_variants, random_prompt
from .measure import memory_bandwidth, peak_rss_mb
from .models import random_official_lm, random_vqgan, tiny_lm_config, tiny_vqgan_config
from .vqgan import bench_vqgan

PARTS = ("lm", "vqgan", "e2e")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of lm, vqgan, e2e")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median), after a warm-up")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    parser.add_argument("--variants", default="float32,int8", help="LM formats: float32, bfloat16, int8, X+compile")
    parser.add_argument("--compile", action="store_true", help="also measure int8+compile")
    parser.add_argument("--prompt", type=int, default=100, help="LM prompt length in tokens")
    parser.add_argument("--new", type=int, default=64, help="LM tokens (frames) to generate")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length for VQGAN and the e2e reference")
    parser.add_argument("--frames", type=int, default=64, help="frames generated end to end (~3 s of audio)")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown or args.runs < 1:
        parser.error(f"--only takes {', '.join(PARTS)}" if unknown else "--runs must be >= 1")
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.compile and "int8+compile" not in args.variant_list:
        args.variant_list.append("int8+compile")
    return args


def run(args: argparse.Namespace, log=print) -> dict:
    device = resolve_device(args.device)
    report = dict(device=str(device), device_name=device_name(device), threads=torch.get_num_threads(),
                  torch=torch.__version__, runs=args.runs, tiny=args.tiny)
    bandwidth = memory_bandwidth(device)
    report["bandwidth_gb_per_s"] = round(bandwidth / 1e9, 1)
    log(f"device {report['device_name']}, {report['threads']} threads, read bandwidth {bandwidth / 1e9:.1f} GB/s")

    models = {}
    if "lm" in args.parts or "e2e" in args.parts:
        log("building the LM (random weights) and its formats...")
        base = random_official_lm(device, torch.float32, config=tiny_lm_config() if args.tiny else None)
        prompt = random_prompt(base, args.prompt)
        models, setup = build_variants(args.variant_list, base, prompt, log=lambda s: log(s))
        del base
        if "lm" in args.parts:
            log("LM prefill/decode...")
            report["lm"] = bench_lm(models, setup, prompt, args.new, args.runs, bandwidth)
    if "vqgan" in args.parts or "e2e" in args.parts:
        vqgan = random_vqgan(device, tiny_vqgan_config() if args.tiny else None)
        if "vqgan" in args.parts:
            log("VQGAN encode/decode...")
            report["vqgan"] = bench_vqgan(vqgan, args.seconds, args.runs)
        if "e2e" in args.parts:
            log("end to end...")
            report["e2e"] = {name: bench_e2e(make_engine(lm, vqgan, device), args.seconds, args.frames, args.runs)
                             for name, lm in models.items()}
    report["peak_rss_mb"] = round(peak_rss_mb())
    return report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {platform.processor() or 'unknown'})"


def table(report: dict) -> str:
    """One markdown table: a column per LM format; format-independent rows fill the first column."""
    lm_rows = {r["variant"]: r for r in report.get("lm", [])}
    e2e = report.get("e2e", {})
    formats = list(dict.fromkeys([*lm_rows, *e2e])) or ["-"]
    rows = []

    def row(label, per_format=None, shared=None):
        cells = [per_format(f) for f in formats] if per_format else [shared] + [""] * (len(formats) - 1)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    if lm_rows:
        get = lambda key, fmt="{}": (lambda f: fmt.format(lm_rows[f][key]) if f in lm_rows else "")
        row("LM weights read per token", get("weights_gb", "{} GB"))
        row(f"LM decode floor ({report['bandwidth_gb_per_s']} GB/s)", get("floor_steps_per_s", "{} tokens/s"))
        first = next(iter(lm_rows.values()))
        row(f"LM prefill, {first['prompt_tokens']}-token prompt", get("prefill_tokens_per_s", "{} tokens/s"))
        row(f"LM decode, {first['new_tokens']} new tokens",
            lambda f: f"{lm_rows[f]['tokens_per_s']} tokens/s ({lm_rows[f]['fraction_of_floor']:.0%} of floor)"
            if f in lm_rows else "")
        row("LM setup (copy/quantize/compile + warm-up)", get("setup_s", "{} s"))
    if "vqgan" in report:
        v = report["vqgan"]
        row(f"VQGAN encode {v['audio_s']:g} s of audio", shared=f"{v['encode_s']} s")
        row(f"VQGAN decode {v['codes']} codes ({v['audio_s']:g} s)", shared=f"{v['decode_s']} s (RTF {v['decode_rtf']})")
    if e2e:
        any_e2e = next(iter(e2e.values()))
        row(f"end to end RTF ({any_e2e['reference_s']:g} s reference, {any_e2e['codes']} frames "
            f"= {any_e2e['audio_s']:.2f} s audio)",
            lambda f: f"{e2e[f]['rtf']} ({e2e[f]['total_s']} s: encode {e2e[f]['encode_s']} + LM {e2e[f]['lm_s']} "
                      f"+ decode {e2e[f]['decode_s']})" if f in e2e else "")
    row("peak RSS", shared=f"{report['peak_rss_mb']} MB")
    head = f"| {report['device_name']}, {report['threads']} threads, median of {report['runs']} | " + " | ".join(formats) + " |"
    return "\n".join([head, "|---" * (len(formats) + 1) + "|", *rows])


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args, log=lambda s: print(s, flush=True))
    print(table(report))
    print(json.dumps(report))
    return report
