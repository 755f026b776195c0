"""Fish Speech v0.2: the LLaMA-style text2semantic LM (core/lm) and the 22,050 Hz VQGAN (core/vqgan)."""

from __future__ import annotations

import functools
import logging

import numpy as np
import torch

from ..audio import SAMPLE_RATE
from ..frontend import PromptText, prompt_head, read_piece, read_text
from ..lm import Sequence, encode_prompt, frames_to_codes
from ..lm.autotune import model_paths
from ..lm.compile import capture_decode, compile_decode, uses_static_cache
from ..lm.generate import budget_new_frames, regroups_prefill
from ..lm.quantize import is_quantized, quantization
from ..lm.stepper import LMStepper
from ..request import SynthesisRequest
from ..vqgan.config import VQConfig
from ..vqgan.streaming import CHUNK_SCHEDULE, WHOLE_SCHEDULE, StreamingDecoder
from . import FISH_SPEECH_V02

log = logging.getLogger(__name__)


class FishSpeech:
    name = FISH_SPEECH_V02
    phonemes = True

    def __init__(self, lm=None, tokenizer=None, vqgan=None):
        self.lm, self.tokenizer, self.vqgan = lm, tokenizer, vqgan
        self.has_codec = vqgan is not None
        self._head_tokens = functools.lru_cache(maxsize=64)(self._read_head_tokens)  # per voice and reading

    def describe(self) -> dict:
        lm, vqgan = self.lm, self.vqgan
        on_cpu = lm is not None and lm.output.weight.device.type == "cpu"
        return dict(
            # the dtype it computes in: a quantized linear's weight holds int8 / packed uint8
            precision=None if lm is None else str(lm.embeddings.weight.dtype).removeprefix("torch."),
            quantize="none" if lm is None else quantization(lm),
            context=None if lm is None else lm.config.max_seq_len,
            num_codebooks=lm.config.num_codebooks
            if lm is not None
            else (vqgan.config.vq.codebook_groups if vqgan is not None else None),
            codebook_size=None if vqgan is None else vqgan.config.vq.codebook_size,
            sample_rate=SAMPLE_RATE if vqgan is None else vqgan.config.sample_rate,
            frame_rate=None if vqgan is None else vqgan.config.sample_rate / vqgan.config.samples_per_code,
            vqgan_precision=None if vqgan is None else vqgan.decode_precision,
            lm_paths=model_paths(lm) if on_cpu else {},
        )

    def compile_decode(self, slots: int) -> bool:
        """torch.compile the decode step: on CUDA captured now for the static scheduler's `slots` rows (False
        where that fails, the step dropped); on the CPU compiled on its first use."""
        compile_decode(self.lm)
        return not uses_static_cache(self.lm) or capture_decode(self.lm, slots)

    def stepper(self) -> LMStepper:
        return LMStepper(self.lm)

    # -- codec ---------------------------------------------------------------------------------

    def encode(self, audio: np.ndarray) -> np.ndarray:
        codes = self.vqgan.encode(torch.as_tensor(np.asarray(audio, dtype=np.float32)))  # checks shape, length
        return codes.cpu().numpy().astype(np.int64)

    def chunk_encoder(self, audio: np.ndarray) -> None:
        return None  # (its encoder is not causal; and 10 s encode in ~0.02 s on 2 vCPUs: no stall to split)

    def decode(self, codes) -> np.ndarray:
        return self.vqgan.decode(codes).reshape(-1).float().cpu().numpy()  # checks shape, dtype and range

    def chunk_decoder(self, streamed: bool = True) -> StreamingDecoder:
        return StreamingDecoder(self.vqgan, CHUNK_SCHEDULE if streamed else WHOLE_SCHEDULE)

    # -- text -> sequences ---------------------------------------------------------------------

    def pieces(self, request: SynthesisRequest, reference_frames: int, max_segment_weight: int) -> list[PromptText]:
        """Each piece's prompt leaves at least half the context for its audio (a long transcript, a small model)."""
        limit = self.lm.config.max_seq_len // 2
        return read_text(
            request.text,
            request.transcript,
            use_g2p=request.use_g2p,
            speaker=request.speaker,
            order=request.order,
            max_weight=max_segment_weight,
            fits=lambda prompt: len(self.tokenizer.encode(prompt)) + reference_frames <= limit,
        )

    def whole_piece(self, request: SynthesisRequest) -> PromptText:
        return read_piece(
            request.text, request.transcript, use_g2p=request.use_g2p, speaker=request.speaker, order=request.order
        )

    def prompt(self, piece: PromptText, request: SynthesisRequest, codes: np.ndarray | None) -> torch.Tensor:
        codes = None if codes is None else torch.as_tensor(codes)
        cfg = self.lm.config
        return encode_prompt(self.tokenizer, piece.prompt, codes, cfg.num_codebooks, cfg.codebook_size)

    def sequences(
        self, request: SynthesisRequest, prompt: torch.Tensor, generators: list, ignore_stop: bool
    ) -> list[Sequence]:
        budget = budget_new_frames(prompt.shape[1], request.max_frames, self.lm.config.max_seq_len)
        code_limit = self.vqgan.config.vq.codebook_size if self.vqgan else VQConfig().codebook_size
        prefix = self.prefix_length(request, prompt)
        return [
            Sequence(
                prompt,
                budget,
                request.sampling,
                self.tokenizer.eos_token_id,
                generator,
                code_limit if request.code_mask else None,
                fast_sampling=is_quantized(self.lm),  # the int8 path is not bit-exact anyway
                ignore_stop=ignore_stop,
                prefix_length=prefix,
            )
            for generator in generators
        ]

    def prefix_length(self, request: SynthesisRequest, prompt: torch.Tensor) -> int:
        """The prompt's leading positions that its transcript alone decides: the tokens it shares with the
        transcript's `prompt_head` (0 without a transcript, or for an LM that prefills each prompt whole,
        which would not use them). The LM keeps their keys and values per voice."""
        if request.transcript is None or not regroups_prefill(self.lm):
            return 0
        try:
            head = self._head_tokens(request.transcript, request.use_g2p, request.speaker, request.order)
        except ValueError as exc:  # (read with the text, it was readable: a prefix is only worth skipping here)
            log.warning("the transcript read alone failed (%s); its prompt is prefilled whole", exc)
            return 0
        n = min(len(head), prompt.shape[1])
        same = prompt[0, :n] == torch.tensor(head[:n], dtype=prompt.dtype)
        return int(same.int().cumprod(0).sum())

    def _read_head_tokens(self, transcript: str, use_g2p: bool, speaker: str | None, order: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(prompt_head(transcript, use_g2p=use_g2p, speaker=speaker, order=order)))

    def codes(self, sequence: Sequence, prompt: torch.Tensor) -> np.ndarray:
        return frames_to_codes(torch.stack(sequence.frames, dim=1).to(prompt.dtype).cpu()).numpy()
