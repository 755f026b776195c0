"""`fishtts` command line: download, vqgan, generate, tts, g2p (also `python -m core ...`; the
`fishtts` package adds serve and webui).

Flag names follow the original tools (tools/vqgan/inference.py, tools/llama/generate.py); defaults
come from core/request.py and core/engine.py; every subcommand is a thin shell over TTSEngine.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

import click
import numpy as np

from .checkpoints import (
    CHECKPOINTS_DIR_ENV,
    DEFAULT_CHECKPOINTS_DIR,
    DEFAULT_S1_DIR,
    FAMILIES,
    FISH_SPEECH_V02,
    HF_REPO_ID,
    LM_FILENAME,
    OPENAUDIO_S1_MINI,
    VQGAN_FILENAME,
    checkpoints_dir,
)
from .engine import (
    DEFAULT_LM_CONFIG,
    DEFAULT_VQGAN_CONFIG,
    DEFAULT_VQGAN_PRECISION,
    DEVICE_NAMES,
    QUANT_MODES,
    VQGAN_PRECISIONS,
)
from .request import DEFAULT_ORDER, DEFAULT_SAMPLING, DEFAULT_SEED, DEFAULT_TEXT, MAX_SEED, S1_DEFAULT_SAMPLING

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
        except MemoryError:
            raise click.ClickException("out of memory") from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper


def require_stdout(message: str) -> None:
    """`message` as the command's error when stdout is closed (`>&-`: writes would vanish, the exit be 0)."""
    if sys.stdout is None:
        raise click.ClickException(message)


def in_checkpoints(filename: str) -> dict:
    """A checkpoint option's default: the official file in the checkpoints folder, read when the command runs."""
    return dict(
        default=lambda: checkpoints_dir() / filename,
        show_default=f"${CHECKPOINTS_DIR_ENV}/{filename}, else {DEFAULT_CHECKPOINTS_DIR / filename}",
    )


def report_speed(frames: int, seconds: float, model) -> None:
    tokens_per_s = frames / max(seconds, 1e-9)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    click.echo(
        f"Generated {frames} frames in {seconds:.2f} s: {tokens_per_s:.2f} tokens/s, "
        f"{model_bytes * tokens_per_s / 1e9:.2f} GB/s",
        err=True,
    )


device_option = click.option("--device", default=None, help=f"{DEVICE_NAMES} (auto, the default: CUDA when available).")

vqgan_precision_option = click.option(
    "--vqgan-precision",
    type=click.Choice(VQGAN_PRECISIONS),
    default=DEFAULT_VQGAN_PRECISION,
    show_default=True,
    envvar="FISHTTS_VQGAN_PRECISION",
    help="Decode audio in bfloat16 (faster on CPUs with AMX / AVX512-BF16; see the README for its SNR); "
    "auto: bfloat16 where it is measured clearly faster on this machine (S1-mini's codec: on CUDA only).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """fishtts: Fish Speech v0.2 and OpenAudio S1-mini text-to-speech with zero-shot voice cloning."""


@main.command()
@click.option(
    "--model",
    "family",
    type=click.Choice(FAMILIES),
    default=FISH_SPEECH_V02,
    show_default=True,
    help=f"Which model's files. {OPENAUDIO_S1_MINI} is a gated repo: accept its licence on Hugging Face and "
    "set HF_TOKEN.",
)
@click.option(
    "--checkpoints-dir",
    "target_dir",
    type=click.Path(path_type=Path),
    default=None,
    help=f"Where to put them [default: {DEFAULT_CHECKPOINTS_DIR} for {FISH_SPEECH_V02}, {DEFAULT_S1_DIR} for "
    f"{OPENAUDIO_S1_MINI}; ${CHECKPOINTS_DIR_ENV} replaces {DEFAULT_CHECKPOINTS_DIR}].",
)
@click.option(
    "--repo-id", default=None, help="Another Hugging Face repo of the same layout (HF_ENDPOINT selects a mirror)."
)
@friendly_errors
def download(family: str, target_dir: Path | None, repo_id: str | None):
    """Fetch a model's official files (skips files already present)."""
    if family == OPENAUDIO_S1_MINI:
        from .s1.download import S1_REPO_ID, download_s1

        paths = download_s1(target_dir or checkpoints_dir() / DEFAULT_S1_DIR.name, repo_id or S1_REPO_ID)
    else:
        from .checkpoints import download_checkpoints

        paths = download_checkpoints(target_dir or checkpoints_dir(), repo_id or HF_REPO_ID)
    for path in paths:
        click.echo(str(path))


model_option = click.option(
    "--model",
    "s1_folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help=f"An {OPENAUDIO_S1_MINI} folder as downloaded (config.json, model.pth, codec.pth, tokenizer files), "
    f"e.g. {DEFAULT_S1_DIR}; without it, the {FISH_SPEECH_V02} checkpoints.",
)


def load_s1_engine(
    folder: Path,
    device: str | None,
    half: bool = False,
    quantize: str | None = None,
    compile: bool = False,
    vqgan_precision: str | None = None,
):
    from .engine import TTSEngine

    return TTSEngine.load_s1(
        folder,
        device=device,
        precision="float16" if half else None,
        quantize=quantize,
        compile=compile,
        vqgan_precision=vqgan_precision or DEFAULT_VQGAN_PRECISION,
    )


@main.command()
@click.option(
    "-i",
    "--input-path",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="Audio to encode (writes codes + reconstruction) or a .npy of codes to decode.",
)
@click.option(
    "-o",
    "--output-path",
    type=click.Path(path_type=Path),
    default="fake.wav",
    show_default=True,
    help="Audio output; codes go next to it with the suffix .npy.",
)
@click.option(
    "-ckpt",
    "--checkpoint-path",
    type=click.Path(path_type=Path),
    **in_checkpoints(VQGAN_FILENAME),
)
@click.option("-cfg", "--config-name", default=DEFAULT_VQGAN_CONFIG, show_default=True)
@device_option
@vqgan_precision_option
@model_option
@friendly_errors
def vqgan(
    input_path: Path,
    output_path: Path,
    checkpoint_path: Path,
    config_name: str,
    device: str | None,
    vqgan_precision: str,
    s1_folder: Path | None,
):
    """Encode audio to VQ codes (and reconstruct it), or decode codes to audio (with --model: the S1 codec)."""
    from .audio import check_writable, load_audio, npy_bytes, replace_file, suffix_format, write_audio
    from .engine import TTSEngine
    from .reference import read_codes_file

    suffix = input_path.suffix.lower()
    if suffix != ".npy" and suffix not in AUDIO_SUFFIXES:
        raise click.ClickException(f"unknown input type {suffix!r}: give an audio file or a .npy of codes")
    suffix_format(output_path)  # before any work (and before the codes beside it are written)
    check_writable(output_path)
    if suffix == ".npy":
        codes = read_codes_file(input_path, str(input_path))  # validate before loading the model
    if s1_folder is not None:
        engine = load_s1_engine(s1_folder, device, vqgan_precision=vqgan_precision)
    else:
        engine = TTSEngine.load(
            lm_checkpoint=None,
            vqgan_checkpoint=checkpoint_path,
            vqgan_config=config_name,
            device=device,
            vqgan_precision=vqgan_precision,
        )
    if suffix != ".npy":
        audio = load_audio(input_path, engine.info.sample_rate)
        codes = engine.encode_reference(audio)
        codes_path = output_path.with_suffix(".npy")
        replace_file(codes_path, npy_bytes(codes))
        click.echo(f"Saved codes {list(codes.shape)} ({engine.info.frame_rate:.2f} Hz) to {codes_path}", err=True)
    audio = engine.decode_codes(codes)
    write_audio(output_path, audio, engine.info.sample_rate)
    click.echo(f"Saved audio ({audio.size / engine.info.sample_rate:.2f} s) to {output_path}", err=True)


def sampling_default(field: str, with_model: bool) -> str:
    """A sampling option's default as help shows it: v0.2's, and S1-mini's where the command takes --model."""
    v02 = f"[default: {getattr(DEFAULT_SAMPLING, field)}"
    return f"{v02}; {getattr(S1_DEFAULT_SAMPLING, field)} with --model]" if with_model else f"{v02}]"


def generation_options(func, with_model: bool = True):
    """Options shared by `generate` and `tts`, with the original generate.py's defaults (`with_model`: the
    command takes --model, whose family has defaults of its own)."""
    options = [
        click.option(
            "--max-new-tokens",
            "--max_new_tokens",
            "max_new_tokens",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="Frames to generate at most; 0 = until the context is full.",
        ),
        click.option("--top-k", type=click.IntRange(min=1), default=DEFAULT_SAMPLING.top_k),
        click.option(
            "--top-p",
            type=click.FloatRange(0, 1, min_open=True),
            default=None,
            help=sampling_default("top_p", with_model),
        ),
        click.option(
            "--repetition-penalty",
            type=click.FloatRange(0, min_open=True),
            default=None,
            help=sampling_default("repetition_penalty", with_model),
        ),
        click.option(
            "--temperature",
            type=click.FloatRange(0, min_open=True),
            default=None,
            help=sampling_default("temperature", with_model),
        ),
        click.option(
            "--tokenizer", default=HF_REPO_ID, show_default=True, help="HF repo id, or a folder / tokenizer.json."
        ),
        click.option("--compile/--no-compile", default=False, show_default=True),
        click.option(
            "--quantize",
            type=click.Choice(QUANT_MODES),
            default=None,
            help="Quantize the LM's weights at load (int8 / int4: faster decoding on CPU, approximate; see README).",
        ),
        click.option("--use-g2p/--no-g2p", default=True, show_default=True),
        click.option("--seed", type=click.IntRange(0, MAX_SEED), default=DEFAULT_SEED, show_default=True),
        click.option("--speaker", default=None),
        click.option("--order", default=DEFAULT_ORDER, show_default=True, help="Language priority for g2p."),
        click.option(
            "--half/--no-half", default=False, show_default=True, help="float16 instead of bfloat16 (CUDA only)."
        ),
        device_option,
        click.option(
            "--code-mask/--no-code-mask",
            default=True,
            show_default=True,
            help="Never sample codes the VQGAN cannot decode (off = the original's behaviour).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


v02_generation_options = functools.partial(generation_options, with_model=False)  # (`generate`: no --model)


def synthesis_request(text: str, transcript: str | None, reference, kwargs: dict, family: str = FISH_SPEECH_V02):
    from .lm import SamplingParams
    from .request import SynthesisRequest, default_sampling

    defaults = default_sampling(family)
    sampling = SamplingParams(
        temperature=defaults.temperature if kwargs["temperature"] is None else kwargs["temperature"],
        top_p=defaults.top_p if kwargs["top_p"] is None else kwargs["top_p"],
        top_k=kwargs["top_k"],
        repetition_penalty=defaults.repetition_penalty
        if kwargs["repetition_penalty"] is None
        else kwargs["repetition_penalty"],
    )
    return SynthesisRequest(
        text=text,
        transcript=transcript,
        reference=reference,
        sampling=sampling,
        max_frames=kwargs["max_new_tokens"],
        seed=kwargs["seed"],
        order=kwargs["order"],
        use_g2p=kwargs["use_g2p"],
        speaker=kwargs["speaker"],
        code_mask=kwargs["code_mask"],
    )


def load_engine(lm_checkpoint, lm_config, vqgan_checkpoint, vqgan_config, kwargs: dict, vqgan_precision=None):
    from .engine import TTSEngine

    return TTSEngine.load(
        lm_checkpoint=lm_checkpoint,
        lm_config=lm_config,
        tokenizer=kwargs["tokenizer"],
        vqgan_checkpoint=vqgan_checkpoint,
        vqgan_config=vqgan_config,
        device=kwargs["device"],
        half=kwargs["half"],
        compile=kwargs["compile"],
        quantize=kwargs["quantize"],
        vqgan_precision=vqgan_precision or DEFAULT_VQGAN_PRECISION,
    )


@main.command()
@click.option("--text", default=DEFAULT_TEXT, show_default=True)
@click.option("--prompt-text", default=None, help="Transcript of the reference clip.")
@click.option(
    "--prompt-tokens",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Reference codes (.npy [4, T] from `fishtts vqgan`).",
)
@click.option("--num-samples", type=click.IntRange(min=1), default=1, show_default=True)
@click.option(
    "--checkpoint-path",
    type=click.Path(path_type=Path),
    **in_checkpoints(LM_FILENAME),
)
@click.option("--config-name", default=DEFAULT_LM_CONFIG, show_default=True)
@click.option("--output-dir", type=click.Path(path_type=Path, file_okay=False), default=".", show_default=True)
@v02_generation_options
@friendly_errors
def generate(text, prompt_text, prompt_tokens, num_samples, checkpoint_path, config_name, output_dir, **kwargs):
    """Generate semantic codes for TEXT (codes_N.npy), optionally in the voice of reference codes."""
    from tqdm import tqdm

    from .audio import AudioError, check_writable, npy_bytes, replace_file
    from .reference import read_codes_file
    from .request import Reference

    reference = None
    if prompt_tokens:  # checked before the model loads
        reference = Reference("--prompt-tokens", codes=read_codes_file(prompt_tokens, str(prompt_tokens)))
    request = synthesis_request(text, prompt_text, reference, kwargs)
    try:  # the output folder too (it had failed after the generation)
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AudioError(f"cannot make the output folder {output_dir}: {exc.strerror or exc}") from None
    check_writable(output_dir / "codes_0.npy")
    engine = load_engine(checkpoint_path, config_name, None, DEFAULT_VQGAN_CONFIG, kwargs)
    prompt = engine.encode_prompt(request)
    click.echo(f"Encoded prompt shape: {list(prompt.shape)}", err=True)
    with tqdm(total=None, unit="frame", desc="generating", file=sys.stderr) as bar:
        start = time.perf_counter()
        codes = engine.generate_codes(request, num_samples=num_samples, prompt=prompt, progress=bar.update)
        seconds = time.perf_counter() - start
    report_speed(sum(c.shape[1] + 1 for c in codes), seconds, engine.lm)
    for i, sample_codes in enumerate(codes):
        path = output_dir / f"codes_{i}.npy"
        replace_file(path, npy_bytes(sample_codes))
        click.echo(f"Saved codes {list(sample_codes.shape)} to {path}", err=True)


@main.command()
@click.option("--text", required=True)
@click.option(
    "--reference-audio",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="A 5-10 s clip of the voice to clone.",
)
@click.option("--reference-text", default=None, help="Transcript of the reference clip.")
@click.option(
    "-o",
    "--output",
    default="output.wav",
    show_default=True,
    help="Audio file (.wav, .flac, .ogg or .mp3), or - for a WAV stream on stdout.",
)
@click.option(
    "--stream/--no-stream",
    default=False,
    show_default=True,
    help="Write the audio while it is generated and report the time to first audio "
    "(e.g. `-o - | ffplay -nodisp -autoexit -` plays it as it comes).",
)
@click.option(
    "--llama-checkpoint-path",
    type=click.Path(path_type=Path),
    **in_checkpoints(LM_FILENAME),
)
@click.option("--llama-config-name", default=DEFAULT_LM_CONFIG, show_default=True)
@click.option(
    "--vqgan-checkpoint-path",
    type=click.Path(path_type=Path),
    **in_checkpoints(VQGAN_FILENAME),
)
@click.option("--vqgan-config-name", default=DEFAULT_VQGAN_CONFIG, show_default=True)
@vqgan_precision_option
@model_option
@generation_options
@friendly_errors
def tts(
    text,
    reference_audio,
    reference_text,
    output,
    stream,
    llama_checkpoint_path,
    llama_config_name,
    vqgan_checkpoint_path,
    vqgan_config_name,
    vqgan_precision,
    s1_folder,
    **kwargs,
):
    """Text (+ optional reference voice) to speech in one step; long texts go sentence by sentence.
    With --model, OpenAudio S1-mini reads the text whole (g2p, --order, --speaker do not apply)."""
    from tqdm import tqdm

    from .reference import MIN_REFERENCE_PEAK_DB
    from .request import Reference

    if (reference_audio is None) != (reference_text is None):
        raise click.ClickException("--reference-audio and --reference-text go together")
    sink = AudioSink(output, growing=stream)  # checks the suffix before the models load
    family = FISH_SPEECH_V02 if s1_folder is None else OPENAUDIO_S1_MINI
    reference = None
    if reference_audio:
        reference = Reference("--reference-audio", audio=reference_audio, min_peak_db=MIN_REFERENCE_PEAK_DB)
    request = synthesis_request(text, reference_text, reference, kwargs, family)
    if s1_folder is not None:
        engine = load_s1_engine(
            s1_folder, kwargs["device"], kwargs["half"], kwargs["quantize"], kwargs["compile"], vqgan_precision
        )
    else:
        engine = load_engine(
            llama_checkpoint_path, llama_config_name, vqgan_checkpoint_path, vqgan_config_name, kwargs, vqgan_precision
        )
    sample_rate = engine.info.sample_rate
    start = time.perf_counter()
    with tqdm(total=None, unit="frame", desc="generating", file=sys.stderr) as bar:
        speech = engine.stream(request, progress=bar.update, streamed=stream)  # (to a file: larger chunks)
        chunks = []
        for chunk in speech:
            chunks.append(chunk)
            if stream:
                sink.write(chunk, sample_rate)
    samples = sum(c.size for c in chunks)
    if samples == 0:
        raise click.ClickException("the model produced no audio for this text (try a larger --max-new-tokens)")
    if not stream:
        sink.write(np.concatenate(chunks), sample_rate)
    sink.close()
    seconds = time.perf_counter() - start
    duration = samples / sample_rate
    where = "stdout" if output == "-" else output
    ttfa = f", first audio after {speech.time_to_first_audio:.2f} s" if stream else ""
    click.echo(
        f"Saved {duration:.2f} s of audio to {where} in {len(speech.segments)} segment(s) "
        f"(real-time factor {seconds / max(duration, 1e-9):.2f}{ttfa})",
        err=True,
    )


def _write_all(out, data: bytes) -> None:
    """All of `data`: with PYTHONUNBUFFERED set, stdout's buffer is a raw file whose write may take part of
    it (a pipe's free room), and the rest was silently lost."""
    view = memoryview(data)
    while view:
        view = view[out.write(view) :]


class AudioSink:
    """Where `tts` writes: a file in the format of its suffix (`growing`: written as chunks arrive, so a
    growing file can be played; else written whole once, replacing the file only when complete), or `-`: a
    WAV stream on stdout whose header announces no length."""

    def __init__(self, output: str, growing: bool = False):
        from .audio import check_writable, suffix_format

        if output == "-":
            require_stdout("-o -: stdout is closed, so there is nowhere to write the audio")
        self.output, self.growing = output, growing
        self.format = None if output == "-" else suffix_format(output)  # checked before any work
        if self.format is not None:
            check_writable(output)
        self.writer = None

    def write(self, chunk: np.ndarray, sample_rate: int) -> None:
        from .audio import AudioWriter, pcm16_bytes, streaming_wav_header, write_audio

        if self.format is not None and not self.growing:
            write_audio(self.output, chunk, sample_rate)
            return
        if self.format is None:
            out = sys.stdout.buffer
            if self.writer is None:
                self.writer = out
                _write_all(out, streaming_wav_header(sample_rate))
            _write_all(out, pcm16_bytes(chunk))
            out.flush()
            return
        if self.writer is None:
            self.writer = AudioWriter(self.output, self.format, sample_rate)
        self.writer.write(chunk)

    def close(self) -> None:
        if self.writer is not None and self.format is not None:
            self.writer.close()


@main.command()
@click.argument("text")
@click.option("--order", default=DEFAULT_ORDER, show_default=True, help="Language priority.")
@friendly_errors
def g2p(text: str, order: str):
    """Print TEXT's language segments and phonemes as JSON (pronunciation debugging)."""
    from .text import parse_text_to_segments, segments_to_dicts

    require_stdout("stdout is closed, so there is nowhere to print the phonemes")
    click.echo(json.dumps(segments_to_dicts(parse_text_to_segments(text, order=order)), ensure_ascii=False, indent=2))


if __name__ == "__main__":
    main()
