"""Decode codes to audio while they are still being generated, in chunks that join into the one-shot decode.

The decoder is non-causal, so a chunk of audio is only final once enough codes on both sides are known.
Decoding runs in two stages with their own context: codes -> mel (the WN stack, wide but cheap) is
computed once per code with `mel_context` tokens on either side; mel -> audio (HiFi-GAN, where the cost
is) runs per chunk with only `generator_context` mel frames on either side. Both contexts cover the
layers' receptive fields (computed from the config), so every sample of a chunk is computed from the
same inputs as in `VQGAN.decode` of the whole sequence, and the chunks concatenate to it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .config import VQGANConfig
from .model import VQGAN

FIRST_CHUNK_TOKENS = 16  # ~0.74 s of audio: the first audio waits for these (and the lookahead)
CHUNK_TOKENS = 32  # later chunks: fewer, larger generator calls (less context recomputed)


def mel_context_tokens(config: VQGANConfig) -> int:
    """Codes needed on each side of a code for its mel frames: the WN stack's reach, in tokens."""
    wn = config.decoder
    reach = sum(wn.dilation_rate**i * (wn.kernel_size - 1) // 2 for i in range(wn.n_layers))  # mel frames
    return math.ceil(reach / config.downsample.total_strides) + 1


def generator_context_frames(config: VQGANConfig) -> int:
    """Mel frames needed on each side of a frame for its audio samples: HiFi-GAN's reach."""
    g = config.generator
    reach, rate = 3.0, 1  # conv_pre: kernel 7
    for u, k in zip(g.upsample_rates, g.upsample_kernel_sizes):
        padding = (k - u) // 2
        reach += (math.ceil(max(k - 1 - padding, padding) / u) + 1) / rate  # transposed conv, in input samples
        rate *= u
        blocks = [sum((rk - 1) // 2 * d for d in dilations) + (rk - 1) // 2 * len(dilations)
                  for rk, dilations in zip(g.resblock_kernel_sizes, g.resblock_dilation_sizes)]
        reach += max(blocks) / rate
    reach += 3 / rate  # conv_post: kernel 7
    return math.ceil(reach) + 1


class StreamingDecoder:
    """Feed codes as they come (`push`), take audio chunks as they become final (`chunks`); after the
    last codes, `finish` returns the rest. The chunks concatenate to `VQGAN.decode(all codes)`."""

    def __init__(self, vqgan: VQGAN, first_chunk: int = FIRST_CHUNK_TOKENS, chunk: int = CHUNK_TOKENS):
        if first_chunk < 1 or chunk < 1:
            raise ValueError("chunk sizes must be >= 1 token")
        self.vqgan = vqgan
        cfg = vqgan.config
        self.frames_per_token = cfg.downsample.total_strides
        self.samples_per_frame = cfg.samples_per_code // self.frames_per_token
        self.mel_context = mel_context_tokens(cfg)
        self.generator_context = generator_context_frames(cfg)
        self.first_chunk, self.chunk = first_chunk, chunk
        self.codes: list[Tensor] = []
        self.num_codes = 0
        self.mel = torch.zeros(1, cfg.decoder.out_channels, 0, device=vqgan.device)  # final mel frames
        self.emitted = 0  # tokens whose audio has been returned
        self.finished = False

    @property
    def mel_tokens(self) -> int:
        return self.mel.shape[-1] // self.frames_per_token

    def push(self, codes: Tensor | np.ndarray) -> None:
        """Append codes [groups, n] (any integer dtype, values checked like VQGAN.decode)."""
        if self.finished:
            raise RuntimeError("push after finish")
        codes = torch.as_tensor(codes)
        if codes.shape[-1] == 0:
            return
        self.codes.append(self.vqgan.check_codes(codes))
        self.num_codes += codes.shape[-1]

    @torch.inference_mode()
    def chunks(self) -> list[np.ndarray]:
        """Audio that no future code can change, in chunks of the configured sizes (maybe none)."""
        return self._emit(final=False)

    @torch.inference_mode()
    def finish(self) -> list[np.ndarray]:
        """Everything not yet returned: the codes are complete."""
        out = self._emit(final=True)
        self.finished = True
        return out

    def _emit(self, final: bool) -> list[np.ndarray]:
        self._extend_mel(final)
        # Tokens whose audio is final: their mel and the generator's context after them are known.
        context_tokens = math.ceil(self.generator_context / self.frames_per_token)
        ready = self.mel_tokens if final else max(0, self.mel_tokens - context_tokens)
        out = []
        while ready > self.emitted:
            size = self.first_chunk if self.emitted == 0 else self.chunk
            if ready - self.emitted < size and not final:
                break
            end = min(ready, self.emitted + size)
            out.append(self._audio(self.emitted, end))
            self.emitted = end
        return out

    def _extend_mel(self, final: bool) -> None:
        """Compute the mel of every code whose WN context is complete (all of them when final)."""
        start = self.mel_tokens
        end = self.num_codes if final else max(start, self.num_codes - self.mel_context)
        if end <= start:
            return
        codes = torch.cat(self.codes, dim=1)
        self.codes = [codes]
        lo, hi = max(0, start - self.mel_context), min(self.num_codes, end + self.mel_context)
        mel = self.vqgan.codes_to_mel(codes[:, lo:hi])
        f = self.frames_per_token
        self.mel = torch.cat([self.mel, mel[..., (start - lo) * f : (end - lo) * f]], dim=-1)

    def _audio(self, start: int, end: int) -> np.ndarray:
        """Audio of tokens [start, end) from the mel, with the generator's context on both sides."""
        f, c = self.frames_per_token, self.generator_context
        lo, hi = max(0, start * f - c), min(self.mel.shape[-1], end * f + c)
        audio = self.vqgan.generator(self.mel[..., lo:hi]).reshape(-1)
        s = self.samples_per_frame
        return audio[(start * f - lo) * s : (end * f - lo) * s].float().cpu().numpy()
