"""`S1Model`: one loaded S1 folder doing reference encode → generate → decode, engine-agnostic.

The folder is the official Hugging Face layout: `config.json`, `model.pth`, `codec.pth`,
`tokenizer.tiktoken`, `special_tokens.json` (plus an optional `codec_config.json` for other codecs).
CPU runs float32 (the parity path); CUDA runs the Dual-AR in bfloat16 like the original, the codec
in float32 weights with a bfloat16-autocast decode (the original engine's choice) and a float32 encode.

The codec's decode precision (`codec_precision`, the engine's `vqgan_precision`): "auto" is CUDA's
bfloat16 autocast and float32 on CPU; "bfloat16" on CPU rounds the decoder convs' inputs and weights as
the VQGAN's bfloat16 decode does (~1.9x faster where AMX computes it: 2 s of audio 0.74 against 1.4 s,
Intel Xeon; within 42 dB SNR of float32 on the golden codec, where the original's CUDA autocast gets 40
dB; 31 dB on official-size random weights, as that autocast, below the 40 dB bar for choosing it
unasked); "float32" on CUDA decodes without autocast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import load_audio, resample
from ..device import lm_dtype, resolve_device
from ..vqgan.precision import AUTO, check_precision
from .codec import Codec, StreamingDecoder
from .codec.chunks import ChunkedEncoder
from .codec.packing import resolve_packed_convs
from .generate import GenerationResult, generate
from .lm import DualARTransformer
from .load import CODEC_FILENAME, load_codec, load_dual_ar
from .prompt import Reference, build_prompt
from .sampling import SamplingSettings
from .tokenizer import S1Tokenizer


@dataclass
class Synthesis:
    audio: np.ndarray  # float32 mono in [-1, 1]
    sample_rate: int
    codes: torch.Tensor  # [N, T] the generated codes
    stopped: bool  # the model ended on <|im_end|> (else the frame budget ran out)


class S1Model:
    def __init__(self, lm: DualARTransformer, tokenizer: S1Tokenizer, codec: Codec, device: torch.device):
        if codec.config.num_codebooks != lm.config.num_codebooks:
            raise ValueError(
                f"codec has {codec.config.num_codebooks} codebooks, the Dual-AR expects {lm.config.num_codebooks}"
            )
        self.lm, self.tokenizer, self.codec, self.device = lm, tokenizer, codec, device
        self.codec_autocast = device.type == "cuda"  # (`codec_precision` sets it)

    @classmethod
    def from_folder(
        cls,
        folder: str | os.PathLike,
        device: str | None = None,
        precision: str | None = None,
        codec_precision: str = AUTO,
    ):
        check_precision(codec_precision, "codec")  # (before the files load)
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"S1 model folder not found: {folder}")
        resolved = resolve_device(device)
        lm, tokenizer = load_dual_ar(folder, resolved, lm_dtype(resolved, precision=precision))
        codec = load_codec(folder / CODEC_FILENAME, device=resolved)
        model = cls(lm, tokenizer, codec, resolved)
        model.codec_precision = codec_precision
        return model

    @property
    def codec_precision(self) -> str:
        """What the codec decodes in: "bfloat16" (CUDA's autocast, or the CPU convs') or "float32"."""
        return "bfloat16" if self.codec_autocast or self.codec.decode_dtype == torch.bfloat16 else "float32"

    @codec_precision.setter
    def codec_precision(self, precision: str) -> None:
        """ "auto", "float32" or "bfloat16" (the module docstring says what each does where)."""
        check_precision(precision, "codec")
        cuda = self.device.type == "cuda"
        self.codec_autocast = cuda and precision != "float32"
        self.codec.decode_dtype = torch.bfloat16 if precision == "bfloat16" and not cuda else torch.float32
        resolve_packed_convs(self.codec)  # (measured per precision)

    @property
    def sample_rate(self) -> int:
        return self.codec.sample_rate

    @property
    def frame_length(self) -> int:
        return self.codec.frame_length

    # -- codec --------------------------------------------------------------------------------------
    def encode_reference(self, audio: str | os.PathLike | bytes | np.ndarray, sample_rate: int | None = None):
        """Reference audio (file, bytes, or mono samples at `sample_rate`) → codes [num_codebooks, T].

        Resampling is soxr HQ (the original's /v1/vqgan/encode path; its TTS engine used torchaudio's sinc
        resampler, so codes of references not already at the codec rate can differ slightly)."""
        samples = self.reference_samples(audio, sample_rate)
        codes = self.codec.encode(torch.from_numpy(np.ascontiguousarray(samples)).view(1, 1, -1))
        return codes[0].cpu()

    def chunked_encoder(self, audio, sample_rate: int | None = None) -> ChunkedEncoder:
        """`encode_reference` a chunk at a time (the same codes; for a caller that runs other work between)."""
        return ChunkedEncoder(self.codec, self.reference_samples(audio, sample_rate))

    def reference_samples(self, audio, sample_rate: int | None) -> np.ndarray:
        """What `encode_reference` takes, as mono float32 samples at the codec's rate."""
        if not isinstance(audio, np.ndarray):
            return load_audio(audio, sample_rate=self.sample_rate)
        if sample_rate is None:
            raise ValueError("sample_rate is required with raw samples")
        samples = np.atleast_1d(np.asarray(audio, dtype=np.float32).squeeze())  # (one sample: not a 0-d array)
        if samples.ndim != 1 or samples.size == 0 or not np.isfinite(samples).all():
            raise ValueError(f"expected non-empty finite mono samples, got shape {np.shape(audio)}")
        return samples if sample_rate == self.sample_rate else resample(samples, sample_rate, self.sample_rate)

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """Codes [num_codebooks, T] → float32 mono audio of T * frame_length samples."""
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.codec_autocast else contextlib.nullcontext()
        with autocast:
            audio = self.codec.decode(codes)
        return audio[0, 0].float().cpu().numpy()

    def streaming_decoder(self) -> StreamingDecoder:
        """Decode frames as they are generated; the chunks concatenated equal `decode` of all frames."""
        return StreamingDecoder(self.codec)

    # -- language model -----------------------------------------------------------------------------
    def prompt(self, text: str, references: Sequence[Reference] = ()) -> torch.Tensor:
        return build_prompt(self.tokenizer, text, list(references), self.lm.config.num_codebooks)

    def generate(
        self,
        text: str,
        references: Sequence[Reference] = (),
        settings: SamplingSettings | None = None,
        max_new_frames: int = 0,
        seed: int | None = None,
    ) -> GenerationResult:
        """Text (+ voice references) → codes. With `seed`, a private generator seeded like `torch.manual_seed`."""
        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        return generate(
            self.lm, self.prompt(text, references), self.tokenizer.im_end_id, settings, max_new_frames, generator
        )

    def synthesize(
        self,
        text: str,
        references: Sequence[Reference] = (),
        settings: SamplingSettings | None = None,
        max_new_frames: int = 0,
        seed: int | None = None,
    ) -> Synthesis:
        if not text.strip():
            raise ValueError("text is empty")
        result = self.generate(text, references, settings, max_new_frames, seed)
        if result.codes.size(1) == 0:
            audio = np.zeros(0, dtype=np.float32)
        else:
            audio = self.decode(result.codes)
        return Synthesis(audio=audio, sample_rate=self.sample_rate, codes=result.codes, stopped=result.stopped)
