"""OpenAudio S1-mini: the Dual-AR LM and the 44.1 kHz causal codec (core/s1), loaded from the official folder.

What the v0.2 request fields mean here: the text is read whole (the original does not split it) with
no g2p, language order or speaker tag (the Dual-AR reads text as is); a reference's transcript is its
text (empty when only codes are given). Sampling has no top-k and keeps the original's ranges
(temperature and repetition penalty below 2). CPU runs float32 (or int8/int4 linears); CUDA runs the
LM in bfloat16 and the codec decode under bfloat16 autocast, as the original engine (the codec's precision:
core/s1/pipeline.py).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from ..frontend import PromptText, check_speakable
from ..lm.autotune import model_paths, tune_model
from ..lm.quantize import QUANT_MODES, quantization
from ..request import SynthesisRequest
from ..s1 import S1Model, S1Sequence, SamplingSettings
from ..s1.batch import S1Stepper
from ..s1.codec.chunks import ChunkedDecoder, ChunkedEncoder
from ..s1.compile import compile_decode
from ..s1.prompt import Reference, reference_length
from ..vqgan.precision import AUTO
from . import OPENAUDIO_S1_MINI

log = logging.getLogger(__name__)


def s1_sampling(request: SynthesisRequest) -> SamplingSettings:
    params = request.sampling
    if params.top_k is not None:
        raise ValueError(f"top_k: {OPENAUDIO_S1_MINI} samples without top-k (leave it unset)")
    try:
        return SamplingSettings(
            params.temperature, 1.0 if params.top_p is None else params.top_p, params.repetition_penalty
        )
    except ValueError as exc:
        raise ValueError(f"{str(exc).split()[0]}: {OPENAUDIO_S1_MINI}: {exc}") from None


class OpenAudioS1:
    name = OPENAUDIO_S1_MINI
    phonemes = False
    has_codec = True

    def __init__(self, model: S1Model):
        self.model = model
        self.lm, self.tokenizer, self.codec = model.lm, model.tokenizer, model.codec
        self.cuda = model.device.type == "cuda"

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        device: str | None = None,
        precision: str | None = None,
        quantize: str | None = None,
        codec_precision: str = AUTO,
    ) -> OpenAudioS1:
        if quantize not in (None, *QUANT_MODES):
            raise ValueError(f"unknown quantization {quantize!r} (use one of: {', '.join(QUANT_MODES)})")
        model = S1Model.from_folder(Path(folder), device, precision, codec_precision)
        if quantize is not None:
            model.lm.quantize(quantize)
        if model.device.type == "cpu":
            tune_model(model.lm)  # the decode paths of its linears' format (float32 too), core/lm/autotune.py
        return cls(model)

    def describe(self) -> dict:
        lm, codec = self.lm, self.codec
        quantize = quantization(lm)
        return dict(
            precision=str(lm.norm.weight.dtype).removeprefix("torch."),
            quantize=quantize,
            context=lm.config.max_seq_len,
            num_codebooks=codec.config.num_codebooks,
            # codes the LM reads (row 0: its semantic tokens; build_prompt checks that row exactly); the codec
            # clamps values above its own codebooks, as the original
            codebook_size=max(self.tokenizer.num_semantic, lm.config.codebook_size),
            sample_rate=codec.sample_rate,
            frame_rate=codec.sample_rate / codec.frame_length,
            vqgan_precision=self.model.codec_precision,
            lm_paths={} if self.cuda else model_paths(lm),
        )

    def compile_decode(self, slots: int) -> bool:
        """Compile the decode for the static scheduler's `slots` rows; False where it does not apply or failed."""
        if not self.cuda:
            log.info("compile applies to S1-mini on CUDA; the CPU decode runs its fused kernels")
            return False
        return compile_decode(self.lm, slots)

    def stepper(self) -> S1Stepper:
        return S1Stepper(self.lm)

    # -- codec ---------------------------------------------------------------------------------

    def encode(self, audio: np.ndarray) -> np.ndarray:
        return self.model.encode_reference(audio, self.model.sample_rate).numpy().astype(np.int64)

    def chunk_encoder(self, audio: np.ndarray) -> ChunkedEncoder:
        return self.model.chunked_encoder(audio, self.model.sample_rate)

    def decode(self, codes) -> np.ndarray:
        return self.model.decode(torch.as_tensor(np.asarray(codes)))

    def chunk_decoder(self, streamed: bool = True) -> ChunkedDecoder:
        # The same chunks either way: the causal decoder recomputes nothing between chunks.
        return ChunkedDecoder(self.codec, autocast=self.model.codec_autocast)

    # -- text -> sequences ---------------------------------------------------------------------

    def pieces(self, request: SynthesisRequest, reference_frames: int, max_segment_weight: int) -> list[PromptText]:
        return [self.whole_piece(request)]

    def whole_piece(self, request: SynthesisRequest) -> PromptText:
        # S1-mini reads the text as it is (no cleaning drops symbols first), special-token strings as tokens
        check_speakable(self.tokenizer.plain_text(request.text))
        return PromptText(request.text, request.text)

    def prompt(self, piece: PromptText, request: SynthesisRequest, codes: np.ndarray | None) -> torch.Tensor:
        references = [] if codes is None else [Reference(torch.as_tensor(codes), request.transcript or "")]
        return self.model.prompt(piece.prompt, references)

    def sequences(
        self, request: SynthesisRequest, prompt: torch.Tensor, generators: list, ignore_stop: bool
    ) -> list[S1Sequence]:
        settings = s1_sampling(request)
        # ignore_stop (the benchmark's fixed frame counts): no token id is -1, so only the budget ends it
        im_end_id = -1 if ignore_stop else self.tokenizer.im_end_id
        prefix = reference_length(prompt, self.tokenizer.im_end_id)
        return [
            S1Sequence(prompt, im_end_id, settings, request.max_frames, generator, prefix_length=prefix)
            for generator in generators
        ]

    def codes(self, sequence: S1Sequence, prompt: torch.Tensor) -> np.ndarray:
        return sequence.codes().numpy()
