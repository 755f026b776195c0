"""`python -m bench.prefill`: several requests' prompts prefilled as one packed call vs one after another.

    python -m bench.prefill [--formats int8] [--lengths 30,64,100,200,342] [--prompts 4] [--runs 5] [--tiny]

Official-size random weights (the autotuner's paths, as at load). Per prompt length: `--prompts` jobs
prefilled by core/lm's `prefill_many` (packed into one forward, up to BATCHED_PREFILL_ROWS positions a
call, for quantized formats) against the same jobs one `prefill` each; the two are timed in alternation
(medians of --runs after a warm-up), so their ratio is of one moment of a shared machine. The packed
time is also how long one admission round holds up the running decode batch.
"""

from __future__ import annotations

import argparse
import time

import torch

from core.lm import SamplingParams, Sequence, prefill, prefill_many
from core.lm.generate import BATCHED_PREFILL_ROWS, regroups_prefill

from .lm import build_variant, random_prompt
from .measure import median_runs
from .models import random_official_lm, tiny_lm_config
from .run import report_main, run_header


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.prefill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="int8", help="comma list of float32, int8, int4")
    parser.add_argument("--lengths", default="30,64,100,200,342", help="prompt lengths (positions)")
    parser.add_argument("--prompts", type=int, default=4, help="jobs prefilled per round")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="tiny model (a smoke test)")
    args = parser.parse_args(argv)
    args.format_list = [f.strip() for f in args.formats.split(",") if f.strip()]
    args.length_list = [int(n) for n in args.lengths.split(",") if n.strip()]
    return args


def jobs(model, length: int, count: int) -> list[tuple[list[Sequence], list[int]]]:
    params = SamplingParams()
    return [([Sequence(random_prompt(model, length, seed=j), 8, params, eos_token_id=2)], [j]) for j in range(count)]


def bench_format(model, lengths: list[int], count: int, runs: int, log=print) -> list[dict]:
    model.setup_caches(count, max(lengths) + 8)
    rows = []
    for length in lengths:

        def once(length: int = length) -> dict[str, float]:
            timings = {}
            with torch.inference_mode():
                start = time.perf_counter()
                for sequences, slots in jobs(model, length, count):
                    prefill(model, sequences, slots)
                timings["sequential_s"] = time.perf_counter() - start
                start = time.perf_counter()
                errors = prefill_many(model, jobs(model, length, count))
                timings["batched_s"] = time.perf_counter() - start
            assert errors == [None] * count, errors
            return timings

        timing = median_runs(once, runs)
        row = dict(
            length=length,
            prompts=count,
            sequential_s=round(timing["sequential_s"], 4),
            batched_s=round(timing["batched_s"], 4),
            speedup=round(timing["sequential_s"] / timing["batched_s"], 2),
            batched_tokens_per_s=round(length * count / timing["batched_s"], 1),
            sequential_tokens_per_s=round(length * count / timing["sequential_s"], 1),
        )
        log(f"  {length} x {count}: {row}")
        rows.append(row)
    return rows


def run(args: argparse.Namespace, log=print) -> dict:
    device = torch.device("cpu")
    report = {**run_header(device, args), "batched_prefill_rows": BATCHED_PREFILL_ROWS, "formats": {}}
    base = random_official_lm(device, torch.float32, config=tiny_lm_config() if args.tiny else None)
    for fmt in args.format_list:
        model = build_variant(fmt, base)
        log(f"{fmt}: packed = {regroups_prefill(model)}")
        report["formats"][fmt] = bench_format(model, args.length_list, args.prompts, args.runs, log)
        del model
    return report


def table(report: dict) -> str:
    lines = [
        f"{report['device_name']}, {report['threads']} threads; medians of {report['runs']}; "
        f"packed calls of up to {report['batched_prefill_rows']} positions",
        "| format | prompt | sequential | packed | speedup | packed tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for fmt, rows in report["formats"].items():
        for r in rows:
            lines.append(
                f"| {fmt} | {r['length']} x {r['prompts']} | {r['sequential_s']:.3f} s | {r['batched_s']:.3f} s | "
                f"{r['speedup']:.2f}x | {r['batched_tokens_per_s']:.0f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> dict:
    return report_main(parse_args, run, table, argv)


if __name__ == "__main__":
    main()
