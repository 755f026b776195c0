"""`python -m bench.s1`: OpenAudio S1-mini speed with official-size random weights (SPEC §3.6 estimated config).

    python -m bench.s1 [--runs 3] [--device cpu] [--dtype float32] [--prompt 100] [--frames 32] [--seconds 10]
                       [--only lm,codec] [--threads N] [--tiny]

Measured in this run: read bandwidth and the Dual-AR decode floor it sets (weight bytes read per frame:
the slow stack + output head once, the fast stack + its head at every one of the N codebook positions;
SPEC §10); prefill tokens/s; decode frames/s (stops ignored) as a share of that floor and of real time
(21.53 frames/s); codec encode and decode of --seconds of audio, one-shot and streamed in 8-frame chunks.
Each number is the median of --runs after a warm-up. `--tiny` uses tiny models (a smoke test).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from core.device import resolve_device
from core.s1.codec import Codec, StreamingDecoder
from core.s1.config import CodecConfig, CodecTransformerConfig, DualARConfig
from core.s1.generate import generate
from core.s1.lm import DualARTransformer
from core.s1.sampling import SamplingSettings

from .measure import median_runs, memory_bandwidth, peak_rss_mb, timed
from .run import report_main, run_header

# SPEC §3.6: the estimate that reproduces the published model.pth size (the real config.json was unreachable).
ESTIMATED_S1_MINI = dict(
    vocab_size=155776,
    n_layer=28,
    n_head=16,
    n_local_heads=8,
    head_dim=128,
    dim=1024,
    intermediate_size=3072,
    rope_base=1e6,
    norm_eps=1e-6,
    max_seq_len=8192,
    tie_word_embeddings=False,
    attention_qk_norm=True,
    codebook_size=4096,
    num_codebooks=10,
    n_fast_layer=4,
    scale_codebook_embeddings=True,
)
SEMANTIC_BEGIN = 151643 + 15  # Qwen BPE ranks + the 15 base specials (SPEC §3.6)
TINY_S1 = dict(
    vocab_size=1837,
    n_layer=2,
    n_head=4,
    n_local_heads=2,
    head_dim=16,
    dim=64,
    intermediate_size=160,
    max_seq_len=2560,
    tie_word_embeddings=False,
    attention_qk_norm=True,
    codebook_size=1280,
    num_codebooks=4,
    n_fast_layer=2,
    scale_codebook_embeddings=True,
)
TINY_SEMANTIC_BEGIN = 557
OFFICIAL_FRAME_RATE = 44100 / 2048  # code frames per second of audio (21.53)


def tiny_codec_config() -> CodecConfig:
    qt = CodecTransformerConfig(n_layer=1, dim=128, n_head=2, intermediate_size=384, window_size=8, block_size=256)
    return CodecConfig(
        sample_rate=16000,
        encoder_dim=8,
        encoder_rates=(2, 4, 4, 4),
        decoder_dim=64,
        decoder_rates=(4, 4, 4, 2),
        encoder_transformer_layers=(0, 0, 0, 1),
        general_block_size=1024,
        latent_dim=128,
        n_codebooks=3,
        codebook_size=32,
        semantic_codebook_size=64,
        quantizer_transformer=qt,
    )


def randomize(module: nn.Module, device: torch.device, seed: int = 0) -> None:
    """Materialise a meta-built module with weights that keep activations near unit scale."""
    module.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.dim() >= 2:
                param.normal_(0, (param.numel() / param.size(0)) ** -0.5, generator=gen)
            elif name.endswith("bias"):
                param.zero_()
            elif name.endswith("gamma"):
                param.fill_(1e-2)
            else:
                param.fill_(1.0)  # norms, Snake alphas


def random_dual_ar(device: torch.device, dtype: torch.dtype, tiny: bool) -> DualARTransformer:
    config = DualARConfig(**(TINY_S1 if tiny else ESTIMATED_S1_MINI))
    begin = TINY_SEMANTIC_BEGIN if tiny else SEMANTIC_BEGIN
    with torch.device("meta"):
        model = DualARTransformer(config, begin, begin + min(config.codebook_size, 4096) - 1)
    randomize(model, device)
    model = model.to(dtype)
    model.build_rope_tables()
    return model.eval().requires_grad_(False)


def random_codec(device: torch.device, tiny: bool) -> Codec:
    with torch.device("meta"):
        codec = Codec(tiny_codec_config() if tiny else CodecConfig())
    randomize(codec, device)
    return codec.eval().requires_grad_(False)


def bytes_per_frame(model: DualARTransformer) -> int:
    """Weights one frame reads: slow stack + head once, fast stack + head at each of the N positions."""

    def size(prefixes: tuple[str, ...]) -> int:
        return sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if n.startswith(prefixes))

    slow = size(("layers.", "norm.", "output.", "fast_project_in."))
    fast = size(("fast_layers.", "fast_norm.", "fast_output."))
    return slow + model.config.num_codebooks * fast


def random_prompt(model: DualARTransformer, length: int) -> torch.Tensor:
    prompt = torch.zeros(1 + model.config.num_codebooks, length, dtype=torch.int)
    prompt[0] = torch.randint(0, model.semantic_begin_id, (length,), generator=torch.Generator().manual_seed(0))
    return prompt


def bench_dual_ar(model: DualARTransformer, prompt_length: int, frames: int, runs: int, bandwidth: float) -> dict:
    prompt = random_prompt(model, prompt_length)

    def once():
        marks = []
        start = time.perf_counter()
        generate(
            model,
            prompt,
            im_end_id=-1,
            settings=SamplingSettings(),
            max_new_frames=frames,
            on_frame=lambda _: marks.append(time.perf_counter()),
        )
        return dict(prefill_s=marks[0] - start, frames_per_s=(len(marks) - 1) / (marks[-1] - marks[0]))

    result = median_runs(once, runs)
    weights = bytes_per_frame(model)
    floor = bandwidth / weights
    return dict(
        prompt_tokens=prompt_length,
        frames=frames,
        weights_gb=round(weights / 1e9, 3),
        floor_frames_per_s=round(floor, 2),
        prefill_tokens_per_s=round(prompt_length / result["prefill_s"], 1),
        frames_per_s=round(result["frames_per_s"], 2),
        fraction_of_floor=round(result["frames_per_s"] / floor, 3),
        real_time_factor=round(result["frames_per_s"] / OFFICIAL_FRAME_RATE, 3),
    )


def bench_codec(codec: Codec, seconds: float, runs: int, chunk: int = 8) -> dict:
    device = codec.decoder.model[0].conv.weight.device
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

    def once():
        encode_s, _ = timed(lambda: codec.encode(audio), device)
        decode_s, _ = timed(lambda: codec.decode(codes), device)
        stream_s, _ = timed(streamed, device)
        return dict(encode_s=encode_s, decode_s=decode_s, stream_s=stream_s)

    result = median_runs(once, runs)
    return dict(
        audio_s=seconds,
        frames=frames,
        encode_s=round(result["encode_s"], 3),
        decode_s=round(result["decode_s"], 3),
        decode_rtf=round(result["decode_s"] / seconds, 3),
        stream_chunk_frames=chunk,
        stream_decode_s=round(result["stream_s"], 3),
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.s1", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present)")
    parser.add_argument("--dtype", default=None, help="Dual-AR weights: float32 (CPU default) or bfloat16 (CUDA)")
    parser.add_argument("--prompt", type=int, default=100, help="prompt length in tokens")
    parser.add_argument("--frames", type=int, default=32, help="frames generated (stops ignored)")
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length for the codec")
    parser.add_argument("--only", default="lm,codec", help="lm, codec")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="tiny models (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.frames < 2:
        parser.error("--runs must be >= 1 and --frames >= 2")
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
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    report = dict(**run_header(device, args), dtype=str(dtype).removeprefix("torch."))
    bandwidth = memory_bandwidth(device)
    report["bandwidth_gb_per_s"] = round(bandwidth / 1e9, 1)
    log(f"device {report['device_name']}, {report['threads']} threads, read bandwidth {bandwidth / 1e9:.1f} GB/s")
    parts = {p.strip() for p in args.only.split(",")}
    if "lm" in parts:
        log("Dual-AR (random weights)...")
        model = random_dual_ar(device, dtype, args.tiny)
        report["dual_ar"] = bench_dual_ar(model, args.prompt, args.frames, args.runs, bandwidth)
        del model
    if "codec" in parts:
        log("codec (random weights)...")
        report["codec"] = bench_codec(random_codec(device, args.tiny), args.seconds, args.runs)
    report["peak_rss_mb"] = round(peak_rss_mb())
    return report


def table(report: dict) -> str:
    rows = [
        f"| S1 ({report['device_name']}, {report['threads']} threads, {report['dtype']}, median of "
        f"{report['runs']}) | |",
        "|---|---|",
    ]
    if "dual_ar" in report:
        d = report["dual_ar"]
        rows += [
            f"| Dual-AR weights read per frame | {d['weights_gb']} GB |",
            f"| Dual-AR decode floor ({report['bandwidth_gb_per_s']} GB/s) | {d['floor_frames_per_s']} frames/s |",
            f"| Dual-AR prefill, {d['prompt_tokens']}-token prompt | {d['prefill_tokens_per_s']} tokens/s |",
            f"| Dual-AR decode, {d['frames']} frames | {d['frames_per_s']} frames/s ({d['fraction_of_floor']:.0%} of "
            f"floor; {d['real_time_factor']}x real time) |",
        ]
    if "codec" in report:
        c = report["codec"]
        rows += [
            f"| codec encode {c['audio_s']:g} s | {c['encode_s']} s |",
            f"| codec decode {c['frames']} frames ({c['audio_s']:g} s) | {c['decode_s']} s (RTF {c['decode_rtf']}) |",
            f"| codec streamed decode, {c['stream_chunk_frames']}-frame chunks | {c['stream_decode_s']} s |",
        ]
    rows.append(f"| peak RSS | {report['peak_rss_mb']} MB |")
    return "\n".join(rows)


def main(argv=None) -> dict:
    return report_main(parse_args, run, table, argv)


if __name__ == "__main__":
    main()
