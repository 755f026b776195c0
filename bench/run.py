"""`python -m bench`: speed of every stage with official-size random-weight models, one table + one JSON line.

    python -m bench [--only lm,vqgan,e2e] [--runs 3] [--device cpu] [--variants float32,int8] [--compile]
                    [--num-samples 1,4] [--tiny]
    python -m bench --family openaudio-s1-mini [bench/s1.py's options]: S1-mini's rows instead

Measured in this run: device (the CPU's model name and the flags that matter: avx2, avx512f, avx512_bf16, amx)
and threads; the LM paths the autotuner chose per format (core/lm/autotune.py); memory read bandwidth and the
decode floor it sets per LM weight format (weight bytes read per token / bandwidth, as gpt-fast reports; read
again beside every decode run, bench/measure.py ReadBandwidth); LM prefill tokens/s (100-token prompt) and
decode tokens/s (64 new tokens) per format, alone and as one batch of --num-samples sequences (aggregate
tokens/s); VQGAN encode and decode of 10 s of audio (decode also in bfloat16, with its SNR against float32);
end-to-end RTF of one reference-prompted sentence per format (10 s reference encoded, 64 frames generated with
stops ignored, decoded); streaming: time to first audio vs the non-streamed total for a 100- and a
300-character text (bench/streaming.py); --concurrent requests at once vs one after another
(bench/concurrency.py); peak RSS. Each number is the median of --runs after a warm-up.
`--compile` adds int8+compile (its compile takes 15-95 s on CPU). `--tiny` uses tiny models (tests).
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from core.checkpoints import FAMILIES, FISH_SPEECH_V02, OPENAUDIO_S1_MINI
from core.device import resolve_device
from core.tuning import cpu_info

from .concurrency import bench_concurrency
from .e2e import REFERENCE_TEXT, bench_e2e, make_engine, reference_codes
from .lm import bench_lm, build_variants, random_prompt
from .measure import ReadBandwidth, peak_rss_mb
from .models import add_vqgan_precision_argument, random_official_lm, random_vqgan, tiny_lm_config, tiny_vqgan_config
from .streaming import bench_streaming
from .vqgan import bench_vqgan

PARTS = ("lm", "vqgan", "e2e", "stream", "batch")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS), help="comma list of lm, vqgan, e2e, stream, batch")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median), after a warm-up")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    parser.add_argument(
        "--variants",
        default="float32,int8,int4",
        help="LM formats: float32, bfloat16, int8, int4, X+compile; X:PATH or X:PATH/BATCH_PATH forces decode paths",
    )
    parser.add_argument("--compile", action="store_true", help="also measure int8+compile")
    parser.add_argument("--prompt", type=int, default=100, help="LM prompt length in tokens")
    parser.add_argument("--new", type=int, default=64, help="LM tokens (frames) to generate")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length for VQGAN and the e2e reference")
    parser.add_argument("--frames", type=int, default=64, help="frames generated end to end (~3 s of audio)")
    parser.add_argument("--num-samples", default="1,4", help="LM batch sizes (sequences decoded together)")
    parser.add_argument("--concurrent", default="1,2,4,8", help="concurrent requests for the batch part")
    add_vqgan_precision_argument(parser)
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    args.batch_sizes = tuple(sorted({1, *(int(n) for n in args.num_samples.split(",") if n.strip())}))
    args.concurrency = tuple(sorted({1, *(int(n) for n in args.concurrent.split(",") if n.strip())}))
    args.parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown or args.runs < 1:
        parser.error(f"--only takes {', '.join(PARTS)}" if unknown else "--runs must be >= 1")
    if args.new < 2 or args.prompt < 1:
        parser.error("--new must be >= 2 (the decode rate is timed between frames) and --prompt >= 1")
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.compile and "int8+compile" not in args.variant_list:
        args.variant_list.append("int8+compile")
    return args


def run(args: argparse.Namespace, log=print) -> dict:
    device = resolve_device(args.device)
    report = dict(**run_header(device, args), cpu=cpu_info())
    bandwidth = ReadBandwidth(device)
    gb_per_s = report["bandwidth_gb_per_s"] = round(bandwidth() / 1e9, 1)
    log(f"device {report['device_name']}, {report['threads']} threads, read bandwidth {gb_per_s} GB/s")

    models = {}
    uses_lm = {"lm", "e2e", "stream", "batch"} & set(args.parts)
    if uses_lm:
        log("building the LM (random weights) and its formats...")
        base = random_official_lm(device, torch.float32, config=tiny_lm_config() if args.tiny else None)
        prompt = random_prompt(base, args.prompt)
        shapes = tuple((args.new, n) for n in args.batch_sizes)
        models, setup = build_variants(args.variant_list, base, prompt, log=lambda s: log(s), shapes=shapes)
        del base
        if "lm" in args.parts:
            log("LM prefill/decode...")
            report["lm"] = bench_lm(models, setup, prompt, args.new, args.runs, bandwidth, args.batch_sizes)
    del bandwidth  # its buffer (512 MB) is no part of what the later parts use, nor of their peak RSS
    engine_parts = uses_lm - {"lm"}  # the parts that run through a TTSEngine
    if "vqgan" in args.parts or engine_parts:
        vqgan = random_vqgan(device, tiny_vqgan_config() if args.tiny else None, precision=args.vqgan_precision)
        report["vqgan_precision"] = vqgan.decode_precision
        report["vqgan_packed_convs"] = vqgan.packed_convs
        if "vqgan" in args.parts:
            log("VQGAN encode/decode...")
            report["vqgan"] = bench_vqgan(vqgan, args.seconds, args.runs)
        for name, lm in models.items() if engine_parts else ():
            engine = make_engine(lm, vqgan, device)
            if "e2e" in args.parts:
                log(f"end to end ({name})...")
                report.setdefault("e2e", {})[name] = bench_e2e(engine, args.seconds, args.frames, args.runs)
            if "stream" in args.parts:
                log(f"streaming ({name})...")
                codes = reference_codes(engine, args.seconds)
                report.setdefault("stream", {})[name] = bench_streaming(engine, REFERENCE_TEXT, codes, args.runs)
            if "batch" in args.parts:
                log(f"concurrent requests ({name})...")
                report.setdefault("batch", {})[name] = bench_concurrency(engine, args.concurrency, args.new, args.runs)
            engine.close()
    report["peak_rss_mb"] = round(peak_rss_mb())
    return report


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = cpu_info()
    return f"{cpu['model']} ({platform.machine()}; {' '.join(cpu['flags']) or 'no avx2'})"


def table(report: dict) -> str:
    """One markdown table: a column per LM format; format-independent rows fill the first column."""
    lm_rows = {r["variant"]: r for r in report.get("lm", []) if r["num_samples"] == 1}
    batch_rows = {(r["variant"], r["num_samples"]): r for r in report.get("lm", []) if r["num_samples"] > 1}
    e2e, stream, batch = report.get("e2e", {}), report.get("stream", {}), report.get("batch", {})
    formats = list(dict.fromkeys([*lm_rows, *e2e, *stream, *batch])) or ["-"]
    rows = []

    def row(label, per_format=None, shared=None):
        cells = [per_format(f) for f in formats] if per_format else [shared] + [""] * (len(formats) - 1)
        rows.append(f"| {label} | " + " | ".join(cells) + " |")

    if lm_rows:
        get = lambda key, fmt="{}": lambda f: fmt.format(lm_rows[f][key]) if f in lm_rows else ""
        row("LM weights read per token", get("weights_gb", "{} GB"))
        row(
            "LM decode floor (read bandwidth beside its runs)",
            lambda f: (
                f"{lm_rows[f]['floor_steps_per_s']} tokens/s ({lm_rows[f]['bandwidth_gb_per_s']} GB/s)"
                if f in lm_rows
                else ""
            ),
        )
        first = next(iter(lm_rows.values()))
        row(f"LM prefill, {first['prompt_tokens']}-token prompt", get("prefill_tokens_per_s", "{} tokens/s"))
        row(
            f"LM decode, {first['new_tokens']} new tokens",
            lambda f: (
                f"{lm_rows[f]['tokens_per_s']} tokens/s ({lm_rows[f]['fraction_of_floor']:.0%} of floor)"
                if f in lm_rows
                else ""
            ),
        )
        for n in sorted({n for _, n in batch_rows}):
            row(
                f"LM decode, {n} sequences as one batch (aggregate)",
                lambda f, n=n: (
                    f"{batch_rows[f, n]['tokens_per_s']} tokens/s "
                    f"({batch_rows[f, n]['tokens_per_s'] / lm_rows[f]['tokens_per_s']:.2f}x one)"
                    if (f, n) in batch_rows and f in lm_rows
                    else ""
                ),
            )
        row("LM setup (copy/quantize/compile + warm-up)", get("setup_s", "{} s"))
        row(
            "LM paths (decode one / batched / prefill / prompt attention, autotuned)",
            lambda f: (
                " / ".join(next(iter(lm_rows[f]["paths"].values()), {}).values())
                if f in lm_rows and lm_rows[f]["paths"]
                else ""
            ),
        )
    if "vqgan" in report:
        v = report["vqgan"]
        row(f"VQGAN encode {v['audio_s']:g} s of audio", shared=f"{v['encode_s']} s")
        row(
            f"VQGAN decode {v['codes']} codes ({v['audio_s']:g} s)", shared=f"{v['decode_s']} s (RTF {v['decode_rtf']})"
        )
        row(
            "VQGAN decode in bfloat16 (`--vqgan-precision bfloat16`)",
            shared=f"{v['decode_bf16_s']} s ({v['bf16_speedup']}x; SNR {v['bf16_snr_db']} dB vs float32)",
        )
    if "vqgan_precision" in report:
        convs = "conv weights packed once" if report["vqgan_packed_convs"] else "torch's conv ops"
        row(
            "VQGAN decode precision of e2e / stream / batch (`--vqgan-precision`; convs, measured)",
            shared=f"{report['vqgan_precision']}; {convs}",
        )
    if e2e:
        any_e2e = next(iter(e2e.values()))
        row(
            f"end to end RTF ({any_e2e['reference_s']:g} s reference, {any_e2e['prompt_tokens']}-token prompt, "
            f"{any_e2e['codes']} frames = {any_e2e['audio_s']:.2f} s audio)",
            lambda f: (
                f"{e2e[f]['rtf']} ({e2e[f]['total_s']} s: encode {e2e[f]['encode_s']} + synthesize "
                f"{e2e[f]['synthesize_s']}; alone: LM {e2e[f]['lm_s']}, decode {e2e[f]['decode_s']})"
                if f in e2e
                else ""
            ),
        )
    if stream:
        for i, sample in enumerate(next(iter(stream.values()))):
            label = (
                f"streaming, {sample['chars']}-char text ({sample['segments']} segment(s), {sample['audio_s']} s audio)"
            )
            row(
                label,
                lambda f, i=i: (
                    (
                        f"first audio {stream[f][i]['first_audio_s']} s "
                        f"({stream[f][i]['first_audio_fraction']:.0%} of the "
                        f"{stream[f][i]['whole_s']} s non-streamed), stream done {stream[f][i]['stream_total_s']} s, "
                        f"longest stall {stream[f][i]['stall_s']} s"
                    )
                    if f in stream
                    else ""
                ),
            )
    if batch:
        for i, sample in enumerate(next(iter(batch.values()))):
            row(
                f"{sample['requests']} concurrent requests x {sample['frames']} frames",
                lambda f, i=i: (
                    (
                        f"{batch[f][i]['tokens_per_s']} tokens/s ({batch[f][i]['aggregate_vs_one']}x one; serialized "
                        f"{batch[f][i]['serialized_tokens_per_s']}), p50 {batch[f][i]['p50_s']} s "
                        f"({batch[f][i]['p50_vs_alone']}x "
                        f"alone; serialized {batch[f][i]['serialized_p50_s']} s)"
                    )
                    if f in batch
                    else ""
                ),
            )
    row("peak RSS", shared=f"{report['peak_rss_mb']} MB")
    head = (
        f"| {report['device_name']}, {report['threads']} threads, median of {report['runs']} | "
        + " | ".join(formats)
        + " |"
    )
    return "\n".join([head, "|---" * (len(formats) + 1) + "|", *rows])


def run_header(device: torch.device, args: argparse.Namespace) -> dict:
    """What every benchmark report starts with: where it ran and how often it measured."""
    return dict(
        device=str(device),
        device_name=device_name(device),
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        runs=args.runs,
        tiny=args.tiny,
    )


def report_main(parse_args, run, table, argv=None) -> dict:
    """Parse, run (progress on stdout), then the table and one JSON line."""
    args = parse_args(argv)
    report = run(args, log=lambda s: print(s, flush=True))
    print(table(report))
    print(json.dumps(report))
    return report


def main(argv=None) -> dict:
    """`--family openaudio-s1-mini` hands the other arguments to bench/s1.py (S1-mini's own parts)."""
    family = argparse.ArgumentParser(add_help=False)
    family.add_argument("--family", choices=FAMILIES, default=FISH_SPEECH_V02)
    known, rest = family.parse_known_args(argv)
    if known.family == OPENAUDIO_S1_MINI:
        from .s1 import main as s1_main  # (bench.s1 imports this module)

        return s1_main(rest)
    return report_main(parse_args, run, table, rest)
