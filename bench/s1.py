"""`python -m bench.s1` (or `python -m bench --family openaudio-s1-mini`): OpenAudio S1-mini speed with
official-size random weights (SPEC §3.6 estimated config).

    python -m bench.s1 [--formats float32,int8,int4] [--runs 2] [--batch 4] [--prompt 100] [--frames 32]
                       [--seconds 10] [--only lm,codec] [--device cpu] [--threads N] [--tiny]

Measured in this run: the device (CPU model and flags, as `python -m bench`), read bandwidth and, per Dual-AR
weight format, the decode floor it sets (weight bytes read per frame: the slow stack + output head once, the
fast stack + its head at every one of the N codebook positions; SPEC §10; the bandwidth read again beside
every decode run, bench/measure.py ReadBandwidth); the decode paths the autotuner chose (core/lm/autotune.py)
and the step's torch threads (core/lm/step_threads.py); prefill tokens/s; decode frames/s (stops ignored)
alone, as a share of the floor and of real time (21.53 frames/s), and --batch sequences as one batch
(aggregate); codec encode and decode of --seconds of audio, one-shot and streamed in 8-frame chunks; the
end-to-end real-time factor of one --frames request (prefill + decode + codec decode).
Each number is the median of --runs after a warm-up. `--tiny` uses tiny models (a smoke test).
"""

from __future__ import annotations

import argparse

import torch

from core.device import resolve_device
from core.s1.codec import Codec, StreamingDecoder
from core.s1.codec.packing import resolve_packed_convs
from core.tuning import cpu_info

from .measure import ReadBandwidth, median_runs, peak_rss_mb, timed
from .run import report_main, run_header
from .s1_lm import COMPILED, bench_format, end_to_end_rtf
from .s1_models import OFFICIAL_FRAME_RATE, bytes_per_frame, random_codec, random_dual_ar
from .vqgan import snr_db

__all__ = ["OFFICIAL_FRAME_RATE", "bytes_per_frame", "main", "random_dual_ar"]
FORMATS = ("float32", "bfloat16", "int8", "int4")


def bench_codec(codec: Codec, seconds: float, runs: int, request_frames: int, chunk: int = 8) -> dict:
    device = codec.device
    samples = int(seconds * codec.sample_rate)
    audio = (0.1 * torch.randn(samples, generator=torch.Generator().manual_seed(0))).view(1, 1, -1).to(device)
    frames = -(-samples // codec.frame_length)
    c = codec.config
    codes = torch.cat(
        [
            torch.randint(0, c.semantic_codebook_size, (1, 1, frames)),
            torch.randint(0, c.codebook_size, (1, c.n_codebooks, frames)),
        ],
        dim=1,
    ).to(device)

    def streamed():
        stream = StreamingDecoder(codec)
        for start in range(0, frames, chunk):
            stream.push(codes[..., start : start + chunk])

    packed = {}  # the conv path measured for each precision, as the engine chooses it
    if device.type == "cpu":
        for dtype in (torch.bfloat16, torch.float32):  # (float32, the default, last: it stays set)
            codec.decode_dtype = dtype
            packed[codec.decode_precision] = resolve_packed_convs(codec)

    def decode_bf16():  # (`--vqgan-precision bfloat16`, on the conv path measured for it)
        chosen = codec.decode_dtype, codec.packed_convs
        codec.decode_dtype, codec.packed_convs = torch.bfloat16, packed["bfloat16"]
        try:
            return codec.decode(codes)
        finally:
            codec.decode_dtype, codec.packed_convs = chosen

    def once():
        encode_s, _ = timed(lambda: codec.encode(audio), device)
        decode_s, _ = timed(lambda: codec.decode(codes), device)
        stream_s, _ = timed(streamed, device)
        request_s, _ = timed(lambda: codec.decode(codes[..., :request_frames]), device)
        times = dict(encode_s=encode_s, decode_s=decode_s, stream_s=stream_s, request_s=request_s)
        if device.type == "cpu":
            times["bf16_s"], _ = timed(decode_bf16, device)
        return times

    result = median_runs(once, runs)
    bf16 = {}
    if device.type == "cpu":
        bf16 = dict(
            decode_bf16_s=round(result["bf16_s"], 3),
            bf16_speedup=round(result["decode_s"] / result["bf16_s"], 2),
            bf16_snr_db=round(snr_db(codec.decode(codes).cpu(), decode_bf16().cpu()), 1),
            packed_convs=packed,
        )
    return dict(
        audio_s=seconds,
        frames=frames,
        encode_s=round(result["encode_s"], 3),
        decode_s=round(result["decode_s"], 3),
        decode_rtf=round(result["decode_s"] / seconds, 3),
        stream_chunk_frames=chunk,
        stream_decode_s=round(result["stream_s"], 3),
        request_frames=request_frames,
        request_decode_s=round(result["request_s"], 3),
        **bf16,
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.s1", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="timed runs per measurement (median), after a warm-up")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    parser.add_argument(
        "--formats",
        default=None,
        help="Dual-AR weights: float32, bfloat16, int8, int4, X+compile (CUDA graphs on a GPU; default: CPU "
        "float32,int8,int4; CUDA bfloat16,bfloat16+compile,int8)",
    )
    parser.add_argument("--batch", type=int, default=4, help="sequences decoded as one batch")
    parser.add_argument("--prompt", type=int, default=100, help="prompt length in tokens")
    parser.add_argument("--frames", type=int, default=32, help="frames generated per sequence (stops ignored)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length for the codec")
    parser.add_argument("--only", default="lm,codec", help="lm, codec")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.frames < 2 or args.batch < 1:
        parser.error("--runs and --batch must be >= 1, --frames >= 2")
    args.format_list = [f.strip() for f in args.formats.split(",") if f.strip()] if args.formats else None
    if args.format_list and {f.removesuffix(COMPILED) for f in args.format_list} - set(FORMATS):
        parser.error(f"--formats takes {', '.join(FORMATS)}, each with {COMPILED} or not")
    return args


def run(args: argparse.Namespace, log=print) -> dict:
    # Random weights must not wander into slow denormal arithmetic; the flag is the calling thread's
    # (a test runs this in-process), so it is put back afterwards.
    torch.set_flush_denormal(True)
    try:
        return _run(args, log)
    finally:
        torch.set_flush_denormal(False)


def _run(args: argparse.Namespace, log) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda_formats = ["bfloat16", "bfloat16" + COMPILED, "int8"]
    formats = args.format_list or (cuda_formats if device.type == "cuda" else ["float32", "int8", "int4"])
    report = dict(**run_header(device, args), cpu=cpu_info())
    bandwidth = ReadBandwidth(device)
    gb_per_s = report["bandwidth_gb_per_s"] = round(bandwidth() / 1e9, 1)
    log(f"device {report['device_name']}, {report['threads']} threads, read bandwidth {gb_per_s} GB/s")
    parts = {p.strip() for p in args.only.split(",")}
    if "lm" in parts:
        report["dual_ar"] = {}
        for fmt in formats:
            log(f"Dual-AR {fmt} (random weights)...")
            # quantized formats start from float32 on CPU (their activations stay float32), the model dtype on GPU
            weights = fmt.removesuffix(COMPILED)
            dtype = (
                torch.bfloat16
                if weights == "bfloat16" or (device.type == "cuda" and weights != "float32")
                else torch.float32
            )
            report["dual_ar"][fmt] = bench_format(fmt, device, dtype, args, bandwidth, log)
    del bandwidth  # its buffer (512 MB) is no part of what the codec uses, nor of its peak RSS
    if "codec" in parts:
        log("codec (random weights)...")
        report["codec"] = bench_codec(random_codec(device, args.tiny), args.seconds, args.runs, args.frames)
        for row in report.get("dual_ar", {}).values():
            row["end_to_end_rtf"] = end_to_end_rtf(row, report["codec"]["request_decode_s"])
    report["peak_rss_mb"] = round(peak_rss_mb())
    return report


def table(report: dict) -> str:
    """A column per Dual-AR format; the codec's rows fill the first column."""
    lm = report.get("dual_ar", {})
    formats = list(lm) or ["-"]
    rows = []

    def row(label, cell=None, shared=None):
        cells = [cell(lm[f]) for f in formats] if cell else [shared] + [""] * (len(formats) - 1)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    if lm:
        first = next(iter(lm.values()))
        row("Dual-AR weights read per frame", lambda d: f"{d['weights_gb']} GB")
        row(
            "decode floor (read bandwidth beside its runs)",
            lambda d: f"{d['floor_frames_per_s']} frames/s ({d['bandwidth_gb_per_s']} GB/s)",
        )
        row(f"prefill, {first['prompt_tokens']}-token prompt", lambda d: f"{d['prefill_tokens_per_s']} tokens/s")
        row(
            f"decode, {first['frames']} frames",
            lambda d: (
                f"{d['frames_per_s']} frames/s ({d['fraction_of_floor']:.0%} of floor; "
                f"{d['real_time_factor']}x real time)"
            ),
        )
        row(
            f"decode, {first['batch']} sequences as one batch (aggregate)",
            lambda d: f"{d['batch_frames_per_s']} frames/s ({d['batch_vs_one']}x one)",
        )
        if "end_to_end_rtf" in first:
            row(f"end to end, one {first['frames']}-frame request (RTF)", lambda d: f"{d['end_to_end_rtf']}")
        row(
            "paths (decode one / batched / prefill / prompt attention, autotuned); step threads",
            lambda d: "; ".join([" / ".join(p.values()) for p in d["paths"].values()] + [d["step_threads"]]),
        )
        row("setup (build, quantize, autotune)", lambda d: f"{d['setup_s']} s")
    if "codec" in report:
        c = report["codec"]
        row(f"codec encode {c['audio_s']:g} s", shared=f"{c['encode_s']} s")
        row(
            f"codec decode {c['frames']} frames ({c['audio_s']:g} s)",
            shared=f"{c['decode_s']} s (RTF {c['decode_rtf']})",
        )
        row(f"codec streamed decode, {c['stream_chunk_frames']}-frame chunks", shared=f"{c['stream_decode_s']} s")
        if "decode_bf16_s" in c:
            row(
                "codec decode in bfloat16 (`--vqgan-precision bfloat16`)",
                shared=f"{c['decode_bf16_s']} s ({c['bf16_speedup']}x; SNR {c['bf16_snr_db']} dB vs float32)",
            )
        if "packed_convs" in c:
            paths = (f"{'packed weights' if p else 'torch ops'} ({d})" for d, p in c["packed_convs"].items())
            row("codec conv path (measured per precision)", shared=" / ".join(paths))
    row("peak RSS", shared=f"{report['peak_rss_mb']} MB")
    head = f"| S1-mini, {report['device_name']}, {report['threads']} threads, median of {report['runs']} | "
    return "\n".join([head + " | ".join(formats) + " |", "|---" * (len(formats) + 1) + "|", *rows])


def main(argv=None) -> dict:
    return report_main(parse_args, run, table, argv)


if __name__ == "__main__":
    main()
