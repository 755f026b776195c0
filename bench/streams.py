"""`python -m bench.streams`: N streamed requests at once against the same N one after another, and where
the scheduler thread's time goes.

    python -m bench.streams [--format int8] [--requests 4] [--frames 64] [--reference-seconds 5] [--runs 3]
                       [--packed-rows N] [--tiny]

Official-size random weights (the autotuner's paths), through the engine's streaming path as the
server's workers drive it (`TTSEngine.stream`, one thread per request; HTTP adds only its own
transport). Every request is one segment in the voice of a reference clip's codes and generates
--frames frames (stops ignored). Modes: together, together with one prompt per prefill call (as before
packed prefill), one after another. Reported per mode: wall seconds, the speedup of running together,
time to first audio (median over the requests, from the common start), the real-time factor (wall /
seconds of audio, per request when one after another), and the scheduler thread's seconds in prefill,
decode steps and VQGAN chunk decoding, as shares of the wall time. Time to first audio is counted from
each request's own start (together: the common start).
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import time
from collections import defaultdict

import torch

from core.engine import TTSEngine
from core.request import Reference, SynthesisRequest
from core.vqgan.streaming import StreamingDecoder

from .concurrency import run_requests
from .e2e import REFERENCE_TEXT, make_engine, reference_codes
from .lm import build_variant
from .models import add_vqgan_precision_argument, random_official_lm, random_vqgan, tiny_lm_config, tiny_vqgan_config
from .run import report_main, run_header

generation = importlib.import_module("core.lm.generate")  # (the package's `generate` is the function)
TEXT = "Request number {} speaks its own short sentence."


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n\n")[0])
    parser.add_argument("--format", default="int8", help="float32, int8 or int4")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--frames", type=int, default=64, help="frames generated per request")
    parser.add_argument("--reference-seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--packed-rows", type=int, default=None, help="positions per packed prefill call (0: one prompt per call)"
    )
    add_vqgan_precision_argument(parser)
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke test)")
    return parser.parse_args(argv)


class Accounting:
    """Seconds the scheduler thread spends in the stepper's prefill and forward and in VQGAN chunk decoding."""

    def __init__(self, engine: TTSEngine):
        self.seconds: dict[str, float] = defaultdict(float)
        stepper = engine.scheduler.stepper
        stepper.prefill = self._timed("prefill_s", stepper.prefill)
        stepper.forward = self._timed("step_s", stepper.forward)
        self._chunks = StreamingDecoder.chunks
        StreamingDecoder.chunks = self._timed("vqgan_s", self._chunks)

    def _timed(self, key: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[key] += time.perf_counter() - start

        return timed

    def restore(self) -> None:
        StreamingDecoder.chunks = self._chunks


def run_streams(engine: TTSEngine, requests: list[SynthesisRequest], together: bool) -> dict[str, float]:
    first = [0.0] * len(requests)
    audio = [0.0] * len(requests)
    start = time.perf_counter()

    def one(i: int) -> None:
        began = time.perf_counter()
        for chunk in engine.stream(requests[i], ignore_stop=True):
            if not audio[i]:
                first[i] = time.perf_counter() - began
            audio[i] += chunk.size / engine.info.sample_rate

    run_requests(one, len(requests), together)
    wall = time.perf_counter() - start
    return dict(wall_s=wall, first_audio_s=statistics.median(first), audio_s=sum(audio))


def bench_streams(engine: TTSEngine, count: int, frames: int, reference_seconds: float, runs: int) -> dict:
    codes = reference_codes(engine, reference_seconds)
    requests = [
        SynthesisRequest(
            text=TEXT.format(i),
            transcript=REFERENCE_TEXT,
            reference=Reference("codes", codes=codes),
            order="en",
            max_frames=frames + 1,  # the last frame is the budget's, not audio
            seed=i,
        )
        for i in range(count)
    ]
    accounting = Accounting(engine)
    packed_rows = generation.BATCHED_PREFILL_ROWS
    try:
        run_streams(engine, requests[:1], True)  # warm-up
        results: dict[str, list[dict]] = {"together": [], "together_unpacked": [], "one_by_one": []}
        for _ in range(runs):
            for mode in results:  # alternating: each round sees the same moment of a shared machine
                accounting.seconds.clear()
                generation.BATCHED_PREFILL_ROWS = 0 if mode == "together_unpacked" else packed_rows
                result = run_streams(engine, requests, mode != "one_by_one")
                results[mode].append({**result, **accounting.seconds})
    finally:
        generation.BATCHED_PREFILL_ROWS = packed_rows
        accounting.restore()
    prompt_tokens = int(engine.encode_prompt(requests[0]).shape[1])
    report = dict(requests=count, frames=frames, prompt_tokens=prompt_tokens, modes={})
    for mode, rows in results.items():
        median = {key: statistics.median(r.get(key, 0.0) for r in rows) for key in rows[0]}
        wall = median["wall_s"]
        per_request_audio = median["audio_s"] / count
        report["modes"][mode] = dict(
            wall_s=round(wall, 3),
            first_audio_s=round(median["first_audio_s"], 3),
            audio_s=round(median["audio_s"], 2),
            rtf=round(wall / count / per_request_audio if mode == "one_by_one" else wall / median["audio_s"], 3),
            **{
                f"{key[:-2]}_share": round(median.get(key, 0.0) / wall, 3) for key in ("prefill_s", "step_s", "vqgan_s")
            },
            **{key: round(median.get(key, 0.0), 3) for key in ("prefill_s", "step_s", "vqgan_s")},
        )
    walls = {mode: row["wall_s"] for mode, row in report["modes"].items()}
    report["speedup"] = round(walls["one_by_one"] / walls["together"], 2)
    report["speedup_unpacked"] = round(walls["one_by_one"] / walls["together_unpacked"], 2)
    return report


def run(args: argparse.Namespace, log=print) -> dict:
    device = torch.device("cpu")
    if args.packed_rows is not None:
        generation.BATCHED_PREFILL_ROWS = args.packed_rows
    report = {**run_header(device, args), "format": args.format, "packed_rows": generation.BATCHED_PREFILL_ROWS}
    base = random_official_lm(device, torch.float32, config=tiny_lm_config() if args.tiny else None)
    lm = build_variant(args.format, base)
    del base
    vqgan = random_vqgan(device, tiny_vqgan_config() if args.tiny else None, precision=args.vqgan_precision)
    report["vqgan_precision"] = vqgan.decode_precision
    report["vqgan_packed_convs"] = vqgan.packed_convs
    engine = make_engine(lm, vqgan, device)
    try:
        log(f"{args.requests} streams of {args.frames} frames, {args.format}...")
        report.update(bench_streams(engine, args.requests, args.frames, args.reference_seconds, args.runs))
    finally:
        engine.close()
    return report


def table(report: dict) -> str:
    lines = [
        f"{report['device_name']}, {report['threads']} threads; {report['format']}; {report['requests']} requests of "
        f"{report['frames']} frames, {report['prompt_tokens']}-token prompts; packed prefill calls of up to "
        f"{report['packed_rows']} positions; medians of {report['runs']}; "
        f"together {report['speedup']}x faster ({report['speedup_unpacked']}x with one prompt per prefill call)",
        "| mode | wall | first audio | RTF | prefill | decode steps | VQGAN decode |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in report["modes"].items():
        lines.append(
            f"| {mode} | {m['wall_s']:.2f} s | {m['first_audio_s']:.2f} s | {m['rtf']:.2f} | "
            f"{m['prefill_s']:.2f} s ({m['prefill_share']:.0%}) | {m['step_s']:.2f} s ({m['step_share']:.0%}) | "
            f"{m['vqgan_s']:.2f} s ({m['vqgan_share']:.0%}) |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    return report_main(parse_args, run, table, argv)


if __name__ == "__main__":
    main()
