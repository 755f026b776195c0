"""`fishtts` command line: download, vqgan, generate, tts, g2p (also `python -m core ...`).

Flag names and defaults follow the original tools (tools/vqgan/inference.py, tools/llama/generate.py);
every subcommand is a thin shell over TTSEngine.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from .checkpoints import DEFAULT_CHECKPOINTS_DIR, HF_REPO_ID

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".m4a", ".wma", ".aac", ".aiff", ".aif", ".aifc"}


def friendly_errors(func):
    """Turn expected failures into one line on stderr and exit status 1, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except (ValueError, OSError, RuntimeError) as exc:
            raise click.ClickException(str(exc) or exc.__class__.__name__) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def load_codes_file(path: Path) -> np.ndarray:
    try:
        codes = np.load(path, allow_pickle=False)  # never unpickle user files
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a .npy array of codes: {exc}") from None
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{path}: codes must be a 2-D integer array [4, T], got {codes.dtype} {list(codes.shape)}")
    return codes


def report_speed(frames: int, seconds: float, model) -> None:
    tokens_per_s = frames / max(seconds, 1e-9)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    click.echo(
        f"Generated {frames} frames in {seconds:.2f} s: {tokens_per_s:.2f} tokens/s, "
        f"{model_bytes * tokens_per_s / 1e9:.2f} GB/s", err=True,
    )


class FishttsGroup(click.Group):
    """The core commands, plus `serve` and `webui`, imported only when invoked (core has no web imports)."""

    lazy_commands = {"serve": ("server.cli", "serve"), "webui": ("webui.cli", "webui")}

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy_commands])

    def get_command(self, ctx, name):
        if name in self.lazy_commands:
            import importlib

            module, attr = self.lazy_commands[name]
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)


@click.group(cls=FishttsGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """fishtts: Fish Speech v0.2 text-to-speech with zero-shot voice cloning."""


@main.command()
@click.option("--checkpoints-dir", type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINTS_DIR, show_default=True)
@click.option("--repo-id", default=HF_REPO_ID, show_default=True, help="Hugging Face repo (HF_ENDPOINT selects a mirror).")
@friendly_errors
def download(checkpoints_dir: Path, repo_id: str):
    """Fetch the official VQGAN, LM and tokenizer files (skips files already present)."""
    from .checkpoints import download_checkpoints

    for path in download_checkpoints(checkpoints_dir, repo_id):
        click.echo(str(path))


@main.command()
@click.option("-i", "--input-path", type=click.Path(path_type=Path, exists=True, dir_okay=False), required=True,
              help="Audio to encode (writes codes + reconstruction) or a .npy of codes to decode.")
@click.option("-o", "--output-path", type=click.Path(path_type=Path), default="fake.wav", show_default=True,
              help="Audio output; codes go next to it with the suffix .npy.")
@click.option("-ckpt", "--checkpoint-path", type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINTS_DIR / "vqgan-v1.pth", show_default=True)
@click.option("-cfg", "--config-name", default="vqgan_pretrain", show_default=True)
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available).")
@click.option("--vqgan-precision", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Decode audio in bfloat16 (faster on CPUs with AMX / AVX512-BF16; see the README for its SNR).")
@friendly_errors
def vqgan(input_path: Path, output_path: Path, checkpoint_path: Path, config_name: str, device: str | None,
          vqgan_precision: str):
    """Encode audio to VQ codes (and reconstruct it), or decode codes to audio."""
    from .audio import SAMPLE_RATE, load_audio, write_audio
    from .engine import TTSEngine

    suffix = input_path.suffix.lower()
    if suffix != ".npy" and suffix not in AUDIO_SUFFIXES:
        raise click.ClickException(f"unknown input type {suffix!r}: give an audio file or a .npy of codes")
    if suffix == ".npy":
        codes = load_codes_file(input_path)  # validate before loading the model
    engine = TTSEngine.load(llama_checkpoint=None, vqgan_checkpoint=checkpoint_path, vqgan_config=config_name, device=device,
                            vqgan_precision=vqgan_precision)
    if suffix != ".npy":
        audio = load_audio(input_path)
        codes = engine.encode_reference(audio)
        codes_path = output_path.with_suffix(".npy")
        np.save(codes_path, codes)
        click.echo(f"Saved codes {list(codes.shape)} ({SAMPLE_RATE / engine.vqgan.config.samples_per_code:.2f} Hz) to {codes_path}", err=True)
    audio = engine.decode_codes(codes)
    write_audio(output_path, audio, SAMPLE_RATE)
    click.echo(f"Saved audio ({audio.size / SAMPLE_RATE:.2f} s) to {output_path}", err=True)


def generation_options(func):
    """Options shared by `generate` and `tts`, with the original generate.py's defaults."""
    options = [
        click.option("--max-new-tokens", "--max_new_tokens", "max_new_tokens", type=click.IntRange(min=0), default=0, show_default=True,
                     help="Frames to generate at most; 0 = until the context is full."),
        click.option("--top-k", type=click.IntRange(min=1), default=None),
        click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True),
        click.option("--repetition-penalty", type=click.FloatRange(0, min_open=True), default=1.5, show_default=True),
        click.option("--temperature", type=click.FloatRange(0, min_open=True), default=0.7, show_default=True),
        click.option("--tokenizer", default=HF_REPO_ID, show_default=True, help="HF repo id, or a folder / tokenizer.json."),
        click.option("--compile/--no-compile", default=False, show_default=True),
        click.option("--quantize", type=click.Choice(["int8", "int4"]), default=None,
                     help="Quantize the LM's weights at load (int8: ~3x faster decode on CPU; int4: faster still, "
                          "less exact)."),
        click.option("--use-g2p/--no-g2p", default=True, show_default=True),
        click.option("--seed", type=int, default=42, show_default=True),
        click.option("--speaker", default=None),
        click.option("--order", default="zh,jp,en", show_default=True, help="Language priority for g2p."),
        click.option("--half/--no-half", default=False, show_default=True, help="float16 instead of bfloat16 (CUDA only)."),
        click.option("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)."),
        click.option("--code-mask/--no-code-mask", default=True, show_default=True,
                     help="Never sample codes the VQGAN cannot decode (off = the original's behaviour)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def sampling_from(kwargs):
    from .lm import SamplingParams

    return SamplingParams(temperature=kwargs["temperature"], top_p=kwargs["top_p"], top_k=kwargs["top_k"],
                          repetition_penalty=kwargs["repetition_penalty"])


def run_generation(engine, request) -> list[np.ndarray]:
    """Generate with a tqdm bar and report the speed; returns the codes per sample."""
    from tqdm import tqdm

    prompt = engine.encode_prompt(request)
    click.echo(f"Encoded prompt shape: {list(prompt.shape)}", err=True)
    with tqdm(total=None, unit="frame", desc="generating", file=sys.stderr) as bar:
        start = time.perf_counter()
        codes = engine.generate_codes(request, prompt=prompt, progress=bar.update)
        seconds = time.perf_counter() - start
    frames = sum(c.shape[1] + 1 for c in codes)
    report_speed(frames, seconds, engine.lm)
    return codes


@main.command()
@click.option("--text", default="你说的对, 但是原神是一款由米哈游自主研发的开放世界手游.", show_default=True)
@click.option("--prompt-text", default=None, help="Transcript of the reference clip.")
@click.option("--prompt-tokens", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="Reference codes (.npy [4, T] from `fishtts vqgan`).")
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--checkpoint-path", type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINTS_DIR / "text2semantic-400m-v0.2-4k.pth", show_default=True)
@click.option("--config-name", default="text2semantic_finetune", show_default=True)
@click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True)
@generation_options
@friendly_errors
def generate(text, prompt_text, prompt_tokens, num_samples, checkpoint_path, config_name, output_dir, **kwargs):
    """Generate semantic codes for TEXT (codes_N.npy), optionally in the voice of reference codes."""
    from .engine import GenerationRequest, TTSEngine

    request = GenerationRequest(
        text=text, prompt_text=prompt_text,
        prompt_tokens=load_codes_file(prompt_tokens) if prompt_tokens else None,
        max_new_tokens=kwargs["max_new_tokens"], sampling=sampling_from(kwargs), use_g2p=kwargs["use_g2p"],
        speaker=kwargs["speaker"], order=kwargs["order"], seed=kwargs["seed"], num_samples=num_samples,
        code_mask=kwargs["code_mask"],
    )
    engine = TTSEngine.load(llama_checkpoint=checkpoint_path, llama_config=config_name, tokenizer=kwargs["tokenizer"],
                            vqgan_checkpoint=None, device=kwargs["device"], half=kwargs["half"], compile=kwargs["compile"],
                            quantize=kwargs["quantize"])
    codes = run_generation(engine, request)
    output_dir.mkdir(parents=True, exist_ok=True)
    for i, sample_codes in enumerate(codes):
        path = output_dir / f"codes_{i}.npy"
        np.save(path, sample_codes)
        click.echo(f"Saved codes {list(sample_codes.shape)} to {path}", err=True)


@main.command()
@click.option("--text", required=True)
@click.option("--reference-audio", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
              help="A 5-10 s clip of the voice to clone.")
@click.option("--reference-text", default=None, help="Transcript of the reference clip.")
@click.option("-o", "--output", default="output.wav", show_default=True,
              help="Audio file (.wav, .flac, .ogg or .mp3), or - for a WAV stream on stdout.")
@click.option("--stream/--no-stream", default=False, show_default=True,
              help="Write the audio while it is generated and report the time to first audio "
                   "(e.g. `-o - | ffplay -nodisp -autoexit -` plays it as it comes).")
@click.option("--llama-checkpoint-path", type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINTS_DIR / "text2semantic-400m-v0.2-4k.pth", show_default=True)
@click.option("--llama-config-name", default="text2semantic_finetune", show_default=True)
@click.option("--vqgan-checkpoint-path", type=click.Path(path_type=Path), default=DEFAULT_CHECKPOINTS_DIR / "vqgan-v1.pth", show_default=True)
@click.option("--vqgan-config-name", default="vqgan_pretrain", show_default=True)
@click.option("--vqgan-precision", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="Decode audio in bfloat16 (faster on CPUs with AMX / AVX512-BF16; see the README for its SNR).")
@generation_options
@friendly_errors
def tts(text, reference_audio, reference_text, output, stream, llama_checkpoint_path, llama_config_name,
        vqgan_checkpoint_path, vqgan_config_name, vqgan_precision, **kwargs):
    """Text (+ optional reference voice) to speech in one step; long texts go sentence by sentence."""
    from tqdm import tqdm

    from .audio import SAMPLE_RATE, load_audio
    from .engine import GenerationRequest, TTSEngine

    if (reference_audio is None) != (reference_text is None):
        raise click.ClickException("--reference-audio and --reference-text go together")
    sink = AudioSink(output)  # checks the suffix before the models load
    reference = load_audio(reference_audio) if reference_audio else None
    request = GenerationRequest(
        text=text, prompt_text=reference_text, max_new_tokens=kwargs["max_new_tokens"],
        sampling=sampling_from(kwargs), use_g2p=kwargs["use_g2p"], speaker=kwargs["speaker"],
        order=kwargs["order"], seed=kwargs["seed"], code_mask=kwargs["code_mask"],
    )
    engine = TTSEngine.load(
        llama_checkpoint=llama_checkpoint_path, llama_config=llama_config_name, tokenizer=kwargs["tokenizer"],
        vqgan_checkpoint=vqgan_checkpoint_path, vqgan_config=vqgan_config_name, device=kwargs["device"],
        half=kwargs["half"], compile=kwargs["compile"], quantize=kwargs["quantize"], vqgan_precision=vqgan_precision,
    )
    start = time.perf_counter()
    first_audio = None
    with tqdm(total=None, unit="frame", desc="generating", file=sys.stderr) as bar:
        speech = engine.stream(request, reference, progress=bar.update)
        chunks = []
        for chunk in speech:
            chunks.append(chunk)
            if stream:
                sink.write(chunk)
                if first_audio is None:
                    first_audio = time.perf_counter() - start
    samples = sum(c.size for c in chunks)
    if samples == 0:
        raise click.ClickException("the model produced no audio for this text (try a larger --max-new-tokens)")
    if not stream:
        sink.write(np.concatenate(chunks))
    sink.close()
    seconds = time.perf_counter() - start
    duration = samples / SAMPLE_RATE
    where = "stdout" if output == "-" else output
    ttfa = f", first audio after {first_audio:.2f} s" if first_audio is not None else ""
    click.echo(f"Saved {duration:.2f} s of audio to {where} in {len(speech.segments)} segment(s) "
               f"(real-time factor {seconds / max(duration, 1e-9):.2f}{ttfa})", err=True)


class AudioSink:
    """Where `tts` writes: a file in the format of its suffix (written as chunks arrive, so a growing
    file can be played), or `-`: a WAV stream on stdout whose header announces no length."""

    def __init__(self, output: str):
        from .audio import suffix_format

        self.output = output
        self.format = None if output == "-" else suffix_format(output)  # checked before any work
        self.writer = None

    def write(self, chunk: np.ndarray) -> None:
        from .audio import SAMPLE_RATE, AudioWriter, pcm16_bytes, streaming_wav_header

        if self.format is None:
            out = sys.stdout.buffer
            if self.writer is None:
                self.writer = out
                out.write(streaming_wav_header(SAMPLE_RATE))
            out.write(pcm16_bytes(chunk))
            out.flush()
            return
        if self.writer is None:
            self.writer = AudioWriter(self.output, self.format, SAMPLE_RATE)
        self.writer.write(chunk)

    def close(self) -> None:
        if self.writer is not None and self.format is not None:
            self.writer.close()


@main.command()
@click.argument("text")
@click.option("--order", default="zh,jp,en", show_default=True, help="Language priority.")
@friendly_errors
def g2p(text: str, order: str):
    """Print TEXT's language segments and phonemes as JSON (pronunciation debugging)."""
    from .text import parse_text_to_segments, segments_to_dicts

    click.echo(json.dumps(segments_to_dicts(parse_text_to_segments(text, order=order)), ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
