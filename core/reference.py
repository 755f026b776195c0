"""A voice reference -> codes: the one place uploaded audio, saved codes and .npy files are checked.

Every failure is a `ValueError` whose message starts with the request field the reference came
from (`Reference.field`), so a caller can show it as is (the server answers 422).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf

from .audio import UNKNOWN_LENGTH, input_samples, read_audio, resample
from .request import Reference

if TYPE_CHECKING:
    from .engine import TTSEngine

MIN_REFERENCE_SECONDS = 0.5  # shorter clips carry too little of the voice (5-10 s works best)
MIN_REFERENCE_PEAK_DB = -60  # a clip whose loudest sample is quieter (dBFS) is silence: no voice to clone
# channels x sample rate decoded at most where a length limit applies: a small Ogg file of 64 channels at
# 192 kHz took 7 s of CPU each request (its size and length were within the limits)
MAX_DECODED_RATE = 8 * 192_000


@dataclass(frozen=True)
class PreparedReference:
    codes: np.ndarray  # [codebooks, frames] int64 (or the caller's integer dtype for in-memory codes)
    audio: np.ndarray | None = None  # the decoded clip at the engine's rate, when the reference was audio
    # the clip at its own rate (a saved voice keeps it, so a codec of a higher rate reads its whole band)
    clip: np.ndarray | None = None
    clip_rate: int | None = None


def prepare_reference(
    engine: TTSEngine, reference: Reference, stop: Callable[[], bool] | None = None
) -> PreparedReference:
    """Check the reference against the engine's codec and encode audio to codes (`stop`: see
    `TTSEngine.encode_reference`)."""
    info = engine.info
    if reference.audio is not None:
        # (a clip whose codes cannot fit the context is refused before minutes of decoding and encoding)
        fits = None if info.context is None or info.frame_rate is None else info.context / info.frame_rate
        clip, clip_rate = read_reference_audio(reference, info.sample_rate, fits)
        audio = clip if clip_rate == info.sample_rate else resample(clip, clip_rate, info.sample_rate)
        return PreparedReference(engine.encode_reference(audio, stop), audio, clip, clip_rate)
    codes = reference.codes
    if isinstance(codes, (str, Path)):
        max_frames = None
        if reference.max_seconds is not None and info.frame_rate is not None:
            max_frames = int(reference.max_seconds * info.frame_rate) + 1
        codes = read_codes_file(Path(codes), reference.field, max_frames)
    codes = np.asarray(codes)
    field = reference.field
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer) or codes.shape[1] == 0:
        raise ValueError(
            f"{field}: codes must be a 2-D integer array [{info.num_codebooks}, T] with T >= 1, got {codes.dtype} "
            f"{list(codes.shape)}."
        )
    size = info.codebook_size  # None without a codec: the LM's own bound applies (lm/prompt.py)
    if (info.num_codebooks is not None and codes.shape[0] != info.num_codebooks) or (
        codes.size and (codes.min() < 0 or codes.max() >= (np.iinfo(np.int64).max if size is None else size))
    ):
        values = "0 or more" if size is None else f"in 0..{size - 1}"
        raise ValueError(f"{field}: codes must have shape [{info.num_codebooks}, T] with values {values}.")
    # int64, as the prompt adds each codebook's offset in the codes' own type (int8 codes past 125 wrapped
    # around, a wrong voice) and torch has no arithmetic for unsigned 64-bit; the values fit, checked above
    return PreparedReference(np.ascontiguousarray(codes, dtype=np.int64))  # (a view torch cannot take: copied)


def read_reference_audio(
    reference: Reference, sample_rate: int, context_seconds: float | None = None
) -> tuple[np.ndarray, int]:
    """Decode (or take: samples given as an array are at `sample_rate`) the clip as mono samples at
    its own rate and check its length (at most `reference.max_seconds` and the `context_seconds` of audio
    whose codes the model's context holds) and its loudness (`reference.min_peak_db`): (samples, rate)."""
    field, source, max_seconds = reference.field, reference.audio, reference.max_seconds
    bound = "(--max-reference-seconds)"
    if context_seconds is not None and (max_seconds is None or context_seconds < max_seconds):
        max_seconds, bound = context_seconds, "(what the model's context holds)"
    if isinstance(source, np.ndarray):
        audio, rate = input_samples(source, field), sample_rate
    else:
        # refuse before decoding and resampling a long file, or a wide one (a pipe's header is read once, whole)
        if max_seconds is not None and (isinstance(source, bytes) or Path(source).is_file()):
            declared, channels, rate = _declared(source)
            if declared > max_seconds:
                raise _too_long(declared, max_seconds, bound, field)
            if reference.max_seconds is not None and channels * rate > MAX_DECODED_RATE:  # (a server's guard)
                raise ValueError(
                    f"{field}: the clip has {channels} channels at {rate} Hz, over the {MAX_DECODED_RATE:,} samples "
                    "a second decoded for a reference (8 channels at 192 kHz); send it as mono."
                )
        try:
            audio, rate = read_audio(source, max_seconds)
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
    seconds = audio.size / rate
    if max_seconds is not None and seconds > max_seconds:
        raise _too_long(seconds, max_seconds, bound, field)
    if reference.min_seconds is not None and seconds < reference.min_seconds:
        raise ValueError(
            f"{field}: the reference clip is {seconds:.3f} s long; at least {reference.min_seconds} s "
            "is needed (5-10 s works best)."
        )
    quietest = reference.min_peak_db
    if quietest is not None and not (audio.size and np.abs(audio).max() >= 10 ** (quietest / 20)):
        raise ValueError(
            f"{field}: the reference clip is silent (its loudest sample is below {quietest:g} dBFS); "
            "record or upload one in which the voice speaks."
        )
    return audio, rate


def read_codes_file(path: Path, field: str, max_frames: int | None = None) -> np.ndarray:
    """A .npy of codes, never unpickled (the file may come from a client or a user)."""
    try:
        codes = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):  # (EOFError: an empty file)
        raise ValueError(f"{field}: not a .npy array of codes.") from None
    if not isinstance(codes, np.ndarray):  # an .npz archive under a .npy name
        codes.close()
        raise ValueError(f"{field}: not a .npy array of codes (an .npz archive?).")
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"{field}: codes must be a 2-D integer array [4, T], got {codes.dtype} {list(codes.shape)}.")
    if codes.shape[1] == 0 or (max_frames is not None and codes.shape[1] > max_frames):
        limit = f"1 to {max_frames}" if max_frames is not None else "at least 1"
        raise ValueError(f"{field}: {codes.shape[1]} frames of codes; {limit} are accepted.")
    if codes.dtype == np.uint64 and codes.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{field}: codes out of range (values past 2**63).")
    return np.array(codes, dtype=np.int64)  # (torch has no arithmetic for unsigned 64-bit integers)


def _declared(source: bytes | Path) -> tuple[float, int, int]:
    """(seconds, channels, sample rate) as the file's header says; zeros where it does not."""
    try:
        info = sf.info(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Exception:  # noqa: BLE001 - load_audio gives the readable error
        return 0.0, 0, 0
    # a length not declared: read_audio stops just past the limit
    undeclared = info.frames == UNKNOWN_LENGTH or not info.samplerate
    return (0.0 if undeclared else info.frames / info.samplerate), info.channels, info.samplerate


def _too_long(seconds: float, limit: float, bound: str, field: str) -> ValueError:
    return ValueError(
        f"{field}: the reference clip is {seconds:.1f} s long; the limit is {limit:.4g} s {bound}. "
        "Trim it to 5-10 s of speech."
    )
