"""One synthesis request on a worker thread: reference -> codes -> audio bytes, whole or streamed.

Shared by the original's invoke route and the OpenAI speech route. Client mistakes that only show
up here (undecodable audio, a prompt longer than the context, text the front end rejects) become
422 with a scrubbed message; anything else propagates and is logged as a 500.
"""

from __future__ import annotations

import io
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from core.audio import SAMPLE_RATE, encode_audio, load_audio, pcm16_bytes
from core.engine import GenerationRequest, TTSEngine
from core.lm import SamplingParams
from core.speech import SpeechStream

from .errors import ApiError, scrub

MIN_REFERENCE_SECONDS = 0.5
CONTENT_TYPES = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "ogg": "audio/ogg",
                 "pcm": "audio/pcm"}
STREAM_FORMATS = ("wav", "pcm")  # formats whose bytes can be sent as the samples come


@dataclass
class Reference:
    """Where the voice comes from: encoded audio bytes, an audio file, codes [4, T] or a .npy of them."""

    field: str  # the request field it came from, for messages
    audio_bytes: bytes | None = None
    audio_path: Path | None = None
    codes: np.ndarray | None = None
    codes_path: Path | None = None


@dataclass
class SynthesisJob:
    text: str
    prompt_text: str | None
    reference: Reference | None
    max_new_tokens: int
    sampling: SamplingParams
    use_g2p: bool = True
    speaker: str | None = None
    order: str = "zh,jp,en"
    seed: int | None = None
    output_format: str = "wav"


def sampling_params(body) -> SamplingParams:
    return SamplingParams(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k or None,
                          repetition_penalty=body.repetition_penalty)


def read_reference_audio(source: bytes | Path, max_seconds: float, field: str) -> np.ndarray:
    """Decode a reference clip to 22,050 Hz mono; 422 for undecodable, too short or too long clips."""
    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else source)
        declared = info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - load_audio below gives the readable error
        declared = 0.0
    if declared > max_seconds:  # refuse before decoding and resampling a long file
        raise _too_long(declared, max_seconds, field)
    try:
        audio = load_audio(source, SAMPLE_RATE)
    except ValueError as exc:
        raise ApiError(422, f"{field}: {scrub(str(exc))}", param=field) from None
    seconds = audio.size / SAMPLE_RATE
    if seconds > max_seconds:
        raise _too_long(seconds, max_seconds, field)
    if seconds < MIN_REFERENCE_SECONDS:
        raise ApiError(422, f"{field}: the reference clip is {seconds:.3f} s long; at least "
                            f"{MIN_REFERENCE_SECONDS} s is needed (5-10 s works best).", param=field)
    return audio


def _too_long(seconds: float, limit: float, field: str) -> ApiError:
    return ApiError(422, f"{field}: the reference clip is {seconds:.1f} s long; the limit is {limit:g} s "
                         "(--max-reference-seconds). Trim it to 5-10 s of speech.", param=field)


def read_codes_file(path: Path, field: str, max_frames: int) -> np.ndarray:
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)  # never unpickle client-named files
    except (ValueError, OSError):
        raise ApiError(422, f"{field}: not a .npy array of codes.", param=field) from None
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ApiError(422, f"{field}: codes must be a 2-D integer array [4, T], got {codes.dtype} "
                            f"{list(codes.shape)}.", param=field)
    if codes.shape[1] > max_frames or codes.shape[1] == 0:
        raise ApiError(422, f"{field}: {codes.shape[1]} frames of codes; 1 to {max_frames} are accepted.", param=field)
    return np.array(codes, dtype=np.int64)


def reference_codes(engine: TTSEngine, reference: Reference, max_seconds: float) -> np.ndarray:
    max_frames = int(max_seconds * SAMPLE_RATE / engine.vqgan.config.samples_per_code) + 1
    if reference.codes is not None:
        codes = reference.codes
    elif reference.codes_path is not None:
        codes = read_codes_file(reference.codes_path, reference.field, max_frames)
    else:
        source = reference.audio_bytes if reference.audio_bytes is not None else reference.audio_path
        audio = read_reference_audio(source, max_seconds, reference.field)
        return engine.encode_reference(audio)
    num_codebooks, size = engine.lm.config.num_codebooks, engine.codebook_size
    if codes.shape[0] != num_codebooks or codes.min() < 0 or codes.max() >= size:
        raise ApiError(422, f"{reference.field}: codes must have shape [{num_codebooks}, T] with values in "
                            f"0..{size - 1}.", param=reference.field)
    return codes


def encode_output(audio: np.ndarray, output_format: str) -> bytes:
    if output_format == "pcm":  # OpenAI's raw format: 16-bit little-endian mono
        return pcm16_bytes(audio)
    return encode_audio(audio, SAMPLE_RATE, output_format)


@contextmanager
def client_errors(replacements: dict[str, str] | None):
    """ValueErrors of the engine (TextError, AudioError, a prompt longer than the context, ...) are the
    client's: 422 with the message scrubbed of server paths."""
    try:
        yield
    except ApiError:
        raise
    except ValueError as exc:
        raise ApiError(422, scrub(str(exc), replacements)) from None


def generation_request(engine: TTSEngine, job: SynthesisJob, max_reference_seconds: float) -> GenerationRequest:
    context = engine.lm.config.max_seq_len
    if job.max_new_tokens > context:
        raise ApiError(422, f"max_new_tokens: {job.max_new_tokens} exceeds the model's context of {context}.",
                       param="max_new_tokens")
    codes = None
    if job.reference is not None:
        codes = reference_codes(engine, job.reference, max_reference_seconds)
    return GenerationRequest(
        text=job.text, prompt_text=job.prompt_text, prompt_tokens=codes, max_new_tokens=job.max_new_tokens,
        sampling=job.sampling, use_g2p=job.use_g2p, speaker=job.speaker, order=job.order, seed=job.seed,
    )


def run_synthesis(engine: TTSEngine, job: SynthesisJob, max_reference_seconds: float,
                  replacements: dict[str, str] | None = None) -> bytes:
    with client_errors(replacements):
        audio = engine.synthesize(generation_request(engine, job, max_reference_seconds))
    return encode_output(audio, job.output_format)


def start_stream(engine: TTSEngine, job: SynthesisJob, max_reference_seconds: float,
                 replacements: dict[str, str] | None = None) -> SpeechStream:
    """The same synthesis as run_synthesis, as chunks of samples while it is generated."""
    with client_errors(replacements):
        return engine.stream(generation_request(engine, job, max_reference_seconds))

