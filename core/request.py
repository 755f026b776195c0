"""The synthesis request: what every caller (CLI, HTTP server, benchmark) hands the engine.

Defaults and validation live here and nowhere else: the server's schemas, the CLI's options and
the web UI (through the server's API) read them from this module. A request names its voice as a
`Reference` (audio or codes, as given); `core.reference.prepare_reference` checks and encodes it.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoints import OPENAUDIO_S1_MINI
from .lm.sampling import MAX_REPETITION_PENALTY, MAX_TEMPERATURE, MAX_TOP_K, MIN_REPETITION_PENALTY, SamplingParams
from .s1.sampling import SamplingSettings
from .text.segment import DEFAULT_ORDER, LANGUAGE_CODES

DEFAULT_TEXT = "你说的对, 但是原神是一款由米哈游自主研发的开放世界手游."
DEFAULT_SAMPLING = SamplingParams()  # the original generate.py's: temperature 0.7, top_p 0.5, penalty 1.5
# S1-mini's, from its original CLI (core/s1/sampling.py): temperature 0.8, top_p 0.8, penalty 1.1
S1_DEFAULT_SAMPLING = SamplingParams(**dataclasses.asdict(SamplingSettings()))
DEFAULT_SEED = 42  # the CLI's (the original's); the HTTP API draws a fresh one when none is given
# A long text's piece i samples with seed + i, and torch takes seeds below 2**64: room for any count of pieces.
MAX_SEED = 2**63 - 1
OUTPUT_FORMATS = ("wav", "flac", "mp3", "ogg", "pcm")  # pcm: raw 16-bit little-endian mono
STREAM_FORMATS = ("wav", "pcm")  # formats whose bytes can be sent as the samples come
ORDER_PATTERN = "^({0})(,({0})){{0,{1}}}$".format("|".join(LANGUAGE_CODES), len(LANGUAGE_CODES) - 1)


@dataclass(frozen=True)
class Reference:
    """A voice to clone, as the caller got it: audio (encoded bytes, a file, or mono samples at the
    engine's rate) or codes (an array [codebooks, frames] or a .npy file). `field` names where it came
    from in every error about it; the clip's bounds (length, loudness) apply to audio (None: no bound)."""

    field: str
    audio: bytes | Path | np.ndarray | None = None
    codes: np.ndarray | Path | None = None
    min_seconds: float | None = None
    max_seconds: float | None = None
    min_peak_db: float | None = None  # its loudest sample at least this loud (dBFS): not a silent clip

    def __post_init__(self):
        if (self.audio is None) == (self.codes is None):
            raise ValueError(f"{self.field}: give the reference as audio or as codes (exactly one)")
        audio = self.audio
        if isinstance(audio, (bytearray, memoryview)):
            object.__setattr__(self, "audio", bytes(audio))
        elif isinstance(audio, str):
            object.__setattr__(self, "audio", Path(audio))
        elif audio is not None and not isinstance(audio, (bytes, Path, np.ndarray)):
            raise ValueError(
                f"{self.field}: audio must be encoded bytes, a file path or a numpy array of samples, got "
                f"{type(audio).__name__}"
            )


@dataclass(frozen=True)
class SynthesisRequest:
    """Text (+ a voice) -> speech. `transcript` is what the reference clip says."""

    text: str
    transcript: str | None = None
    reference: Reference | None = None
    sampling: SamplingParams = DEFAULT_SAMPLING
    max_frames: int = 0  # frames to generate at most (per text segment); 0 = until the context is full
    seed: int | None = None  # None: a fresh random seed; text segment i samples with seed + i
    order: str = DEFAULT_ORDER  # language priority for g2p
    use_g2p: bool = True
    speaker: str | None = None
    code_mask: bool = True  # never sample codes the codec cannot decode (False: the original's behaviour)
    output_format: str = "wav"
    streaming: bool = False

    def __post_init__(self):
        for name in ("text", "transcript", "speaker"):
            value = getattr(self, name)
            if not isinstance(value, str) and (value is not None or name == "text"):
                raise ValueError(f"{name}: must be a string, got {type(value).__name__}")
            _check_unicode(name, value)
        if not self.text.strip():
            raise ValueError("text: the text is empty")
        object.__setattr__(self, "max_frames", _whole("max_new_tokens", self.max_frames))
        if self.max_frames < 0:
            raise ValueError("max_new_tokens: must be >= 0")
        if self.seed is not None:
            object.__setattr__(self, "seed", _whole("seed", self.seed))
            if not 0 <= self.seed <= MAX_SEED:
                raise ValueError(f"seed: must be from 0 to {MAX_SEED}, got {self.seed}")
        for name in ("use_g2p", "code_mask", "streaming"):  # (a string "no" would be true)
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if not isinstance(self.order, str):
            raise ValueError(f"order: must be a string like {DEFAULT_ORDER!r}, got {self.order!r}")
        check_order(self.order)
        if self.reference is not None and not isinstance(self.reference, Reference):
            raise ValueError(f"reference: must be a Reference (audio or codes), got {type(self.reference).__name__}")
        if not isinstance(self.sampling, SamplingParams):
            raise ValueError(f"sampling: must be SamplingParams, got {type(self.sampling).__name__}")
        if self.reference is not None and self.reference.audio is not None and self.transcript is None:
            raise ValueError(f"{self.reference.field}: a reference clip needs its transcript (reference text)")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"format: {self.output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
        if self.streaming and self.output_format not in STREAM_FORMATS:
            raise ValueError(
                f"format: streaming sends {' or '.join(STREAM_FORMATS)}; {self.output_format!r} "
                "cannot be streamed (ask for it without streaming)."
            )


def _check_unicode(name: str, value: str | None) -> None:
    """A ValueError naming the field for a lone surrogate: what Python makes of bytes it could not decode
    (a command line in another encoding, `\\ud800` in JSON). The tokenizer refused it with a bare TypeError
    (a speaker name), or g2p dropped it unsaid."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{name}: not valid Unicode (an undecodable character at position {exc.start}; is the text in UTF-8?)"
        ) from None


def _whole(name: str, value) -> int:
    """`value` as an int (numpy's integers too), or a ValueError naming the field (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name}: must be a whole number, got {value!r}")
    return int(value)


def default_sampling(family: str) -> SamplingParams:
    """The sampling a model family was tuned with, for callers that were given none."""
    return S1_DEFAULT_SAMPLING if family == OPENAUDIO_S1_MINI else DEFAULT_SAMPLING


def sampling_fields(family: str) -> tuple[str, ...]:
    """The sampling fields a model family reads (S1-mini's sampler has no top-k); the others are refused."""
    settings = SamplingSettings if family == OPENAUDIO_S1_MINI else SamplingParams
    return tuple(f.name for f in dataclasses.fields(settings))


def check_order(order: str) -> str:
    """`zh,jp,en`-style: known languages, each at most once."""
    languages = order.split(",")
    unknown = [language for language in languages if language not in LANGUAGE_CODES]
    if unknown or not languages:
        raise ValueError(f"order: unknown language {', '.join(unknown)!r} (use {', '.join(LANGUAGE_CODES)})")
    if len(set(languages)) != len(languages):
        raise ValueError("order: languages must not repeat")
    return order


__all__ = [
    "DEFAULT_ORDER",
    "DEFAULT_SAMPLING",
    "DEFAULT_SEED",
    "DEFAULT_TEXT",
    "MAX_SEED",
    "MAX_REPETITION_PENALTY",
    "MAX_TEMPERATURE",
    "MAX_TOP_K",
    "MIN_REPETITION_PENALTY",
    "OUTPUT_FORMATS",
    "ORDER_PATTERN",
    "Reference",
    "STREAM_FORMATS",
    "SamplingParams",
    "SynthesisRequest",
    "S1_DEFAULT_SAMPLING",
    "check_order",
    "default_sampling",
    "sampling_fields",
]
