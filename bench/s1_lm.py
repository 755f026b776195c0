"""The Dual-AR part of `python -m bench.s1`: one weight format's prefill, decode alone and batched, against its floor.

Decode runs as the engine runs it: core/s1/batch.py's S1Stepper (each sequence in its own cache slot, the step's
torch threads chosen by timing, core/lm/step_threads.py), stops ignored (no token id is -1), so every run
decodes exactly `frames` frames per sequence.
"""

from __future__ import annotations

import time

import torch

from core.lm.autotune import tune_model
from core.s1.batch import S1Sequence, S1Stepper
from core.s1.compile import compile_decode
from core.s1.lm import DualARTransformer
from core.s1.sampling import SamplingSettings

from .measure import ReadBandwidth, median_runs, sync
from .s1_models import OFFICIAL_FRAME_RATE, bytes_per_frame, random_dual_ar, random_prompt

COMPILED = "+compile"  # a format's suffix: its decode compiled (core/s1/compile.py)


def build(
    fmt: str, device: torch.device, dtype: torch.dtype, tiny: bool, static_slots: int | None = None
) -> tuple[DualARTransformer, dict, float]:
    """A random model in `fmt` (float32 / bfloat16 / int8 / int4), its autotuned paths and the setup seconds;
    with `static_slots`, its decode compiled for that many slots (as the engine's `compile`)."""
    start = time.perf_counter()
    model = random_dual_ar(device, dtype, tiny)
    if fmt in ("int8", "int4"):
        model.quantize(fmt)
    chosen = tune_model(model) if device.type == "cpu" else {}
    if static_slots is not None and not compile_decode(model, static_slots):
        raise RuntimeError(f"{fmt}: compiling the decode failed (see the log)")
    return model, chosen, time.perf_counter() - start


def prefill_job(stepper: S1Stepper, sequences: list[S1Sequence], slots: list[int]) -> None:
    """One job through the stepper's prefill (as a scheduler admission round); its error raised."""
    (error,) = stepper.prefill([(sequences, slots)])
    if error is not None:
        raise error


@torch.inference_mode()  # as the scheduler's thread runs (a sequence's history is an inference tensor)
def decode_run(
    model: DualARTransformer,
    stepper: S1Stepper,
    prompt: torch.Tensor,
    frames: int,
    batch: int,
    static_slots: int | None = None,
) -> dict:
    """Prefill `batch` sequences of `prompt`, then decode them together until each has `frames` frames
    (with `static_slots`, every step over that many slots, in the caches compile_decode set up)."""
    device = model.norm.weight.device
    if static_slots is None:
        model.setup_caches(batch, prompt.size(1) + frames)
    sequences = [
        S1Sequence(prompt, -1, SamplingSettings(), frames, torch.Generator(device).manual_seed(i)) for i in range(batch)
    ]
    sync(device)
    start = time.perf_counter()
    prefill_job(stepper, sequences[:1], [0])
    sync(device)
    prefill_s = time.perf_counter() - start
    prefill_job(stepper, sequences[1:], list(range(1, batch)))
    sync(device)
    start = time.perf_counter()
    while active := [s for s in sequences if not s.finished]:
        for sequence, frame in zip(active, stepper.forward(active, static_slots), strict=True):
            sequence.accept(frame)
    sync(device)
    decoded = sum(len(s.frames) - 1 for s in sequences)  # (the first frame of each is the prefill's)
    return dict(prefill_s=prefill_s, frames_per_s=decoded / (time.perf_counter() - start))


def bench_format(
    fmt: str, device: torch.device, dtype: torch.dtype, args, bandwidth: ReadBandwidth, log=print
) -> dict[str, object]:
    # compiled for a batch's slots, which every step then runs, a sequence alone too (CUDA graphs replay one
    # shape: the engine's static scheduler does the same with its max batch)
    static_slots = args.batch if fmt.endswith(COMPILED) else None
    model, chosen, setup_s = build(fmt.removesuffix(COMPILED), device, dtype, args.tiny, static_slots)
    stepper = S1Stepper(model)
    prompt = random_prompt(model, args.prompt)
    weights = bytes_per_frame(model)

    def alone() -> dict[str, float]:  # with the floor beside the run (the VM's bandwidth moves within minutes)
        run, read = bandwidth.around(lambda: decode_run(model, stepper, prompt, args.frames, 1, static_slots))
        return dict(run, bandwidth=read, fraction=run["frames_per_s"] * weights / read)

    log(f"  {fmt}: decode alone...")
    one = median_runs(alone, args.runs)
    threads = stepper.step_threads.setting  # (chosen during the warm-up's first steps)
    log(f"  {fmt}: {args.batch} sequences as one batch...")
    batched = median_runs(lambda: decode_run(model, stepper, prompt, args.frames, args.batch, static_slots), args.runs)
    floor = one["bandwidth"] / weights
    log(f"  {fmt}: {one['frames_per_s']:.2f} frames/s alone, {batched['frames_per_s']:.2f} as {args.batch}")
    return dict(
        format=fmt,
        prompt_tokens=args.prompt,
        frames=args.frames,
        weights_gb=float(f"{weights / 1e9:.4g}"),
        bandwidth_gb_per_s=round(one["bandwidth"] / 1e9, 1),
        floor_frames_per_s=round(floor, 2),
        prefill_tokens_per_s=round(args.prompt / one["prefill_s"], 1),
        prefill_s=round(one["prefill_s"], 3),
        frames_per_s=round(one["frames_per_s"], 2),
        fraction_of_floor=round(one["fraction"], 3),
        real_time_factor=round(one["frames_per_s"] / OFFICIAL_FRAME_RATE, 3),
        batch=args.batch,
        batch_frames_per_s=round(batched["frames_per_s"], 2),
        batch_vs_one=round(batched["frames_per_s"] / one["frames_per_s"], 2),
        paths=chosen,
        step_threads=threads,
        setup_s=round(setup_s, 1),
    )


def end_to_end_rtf(row: dict, codec_decode_s: float) -> float:
    """Seconds per second of audio for one request of `frames` frames: this run's prefill, `frames` decode
    steps at its decode rate and the codec's decode of that many frames (each a median of this run)."""
    frames = row["frames"]
    seconds = row["prefill_s"] + (frames - 1) / row["frames_per_s"] + codec_decode_s
    return round(seconds / (frames / OFFICIAL_FRAME_RATE), 3)
