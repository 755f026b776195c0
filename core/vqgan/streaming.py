"""Decode codes to audio while they are still being generated, in chunks that join into the one-shot decode.

The decoder is non-causal, so a chunk of audio is only final once enough codes on both sides are known.
Decoding runs in two stages: codes -> mel (the WN stack, wide but cheap) is computed once per code with
`mel_context` tokens on either side; mel -> audio (HiFi-GAN, where the cost is) runs as a stream
(generator_stream.py) that computes every layer once and holds back what still waits for its right
context, so a chunk is ready once the mel reaches `lookahead_tokens` past it. The mel is fed to it in
pieces that depend only on the chunk schedule, so the audio never depends on when codes arrived, and the
chunks concatenate to `VQGAN.decode` of the whole sequence up to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .config import VQGANConfig
from .generator_stream import GeneratorStream, lag_samples
from .model import VQGAN

# Chunk sizes in tokens (the last repeats): a small first one for an early start, then sizes that grow
# slowly enough to stay ahead of playback up to a real-time factor of ~0.75 (chunk k + 1 must be made
# while chunks 0..k play). 16 tokens = 0.74 s of audio.
CHUNK_SCHEDULE = (8, 8, 12, 16)
# For audio returned whole (not streamed): no playback to stay ahead of, so chunks of 256 tokens (12 s;
# larger convolutions per call), still bounded in memory for a long segment.
WHOLE_SCHEDULE = (256,)
MEL_BLOCK_TOKENS = 8  # the mel is computed on a fixed grid of blocks, so the audio never depends on timing


def mel_context_tokens(config: VQGANConfig) -> int:
    """Codes needed on each side of a code for its mel frames: the WN stack's reach, in tokens."""
    wn = config.decoder
    reach = sum(wn.dilation_rate**i * (wn.kernel_size - 1) // 2 for i in range(wn.n_layers))  # mel frames
    return math.ceil(reach / config.downsample.total_strides)  # a token's frames reach this many tokens out


def generator_lookahead_frames(config: VQGANConfig) -> int:
    """Mel frames the generator stream needs past a frame before that frame's audio is out."""
    return math.ceil(lag_samples(config.generator) / math.prod(config.generator.upsample_rates))


class StreamingDecoder:
    """Feed codes as they come (`push`), take audio chunks as they become final (`chunks`); after the
    last codes, `finish` (or `chunks(final=True)`, a chunk at a time with `limit`) returns the rest.
    The chunks concatenate to `VQGAN.decode(all codes)` (within float rounding: the same sums over
    different tensor lengths), and they depend only on the codes and the chunk schedule, never on how
    the codes were pushed."""

    def __init__(self, vqgan: VQGAN, schedule: tuple[int, ...] = CHUNK_SCHEDULE):
        if not schedule or min(schedule) < 1:
            raise ValueError("chunk sizes must be >= 1 token")
        self.vqgan = vqgan
        cfg = vqgan.config
        self.frames_per_token = cfg.downsample.total_strides
        self.samples_per_frame = cfg.samples_per_code // self.frames_per_token
        self.mel_context = mel_context_tokens(cfg)
        self.lookahead_tokens = math.ceil(generator_lookahead_frames(cfg) / self.frames_per_token)
        self.generator = GeneratorStream(vqgan.generator)
        self.mel_fed = 0  # mel frames pushed into the generator
        self.generator_finished = False  # the last mel frame went in (as final)
        self.audio = torch.zeros(0, device=vqgan.device)  # generator output not yet returned
        self.schedule = schedule
        self.codes: list[Tensor] = []
        self.num_codes = 0
        self.mel = torch.zeros(1, cfg.decoder.out_channels, 0, device=vqgan.device)  # final mel frames
        self.emitted = 0  # tokens whose audio has been returned
        self.chunk_index = 0
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

    def chunk_ready(self, final: bool = False) -> bool:
        """Whether `chunks(final)` would return something now (a cheap check, no decoding)."""
        if self.emitted >= self.num_codes:
            return False
        if final:
            return True
        needed = self.emitted + self.schedule[min(self.chunk_index, len(self.schedule) - 1)] + self.lookahead_tokens
        if self.mel_tokens >= needed:
            return True
        mel_end = -(-needed // MEL_BLOCK_TOKENS) * MEL_BLOCK_TOKENS  # the block grid, rounded up
        return mel_end + self.mel_context <= self.num_codes

    @property
    def done(self) -> bool:
        """All the audio of the codes pushed has been returned (meaningful once no more will come)."""
        return self.emitted >= self.num_codes

    @torch.inference_mode()
    def chunks(self, final: bool = False, limit: int | None = None) -> list[np.ndarray]:
        """Audio that no future code can change, in chunks of the schedule's sizes (maybe none), at most
        `limit` of them. `final=True`: the codes are complete, so everything is final."""
        if final:
            self.finished = True
        out = []
        while self.emitted < self.num_codes and (limit is None or len(out) < limit):
            size = self.schedule[min(self.chunk_index, len(self.schedule) - 1)]
            end = min(self.emitted + size, self.num_codes) if final else self.emitted + size
            # The chunk's audio needs the mel up to `lookahead_tokens` past its end (or to the true end).
            if not self._extend_mel(self.num_codes if final else end + self.lookahead_tokens, final):
                break
            out.append(self._audio(self.emitted, end))
            self.emitted = end
            self.chunk_index += 1
        return out

    def finish(self) -> list[np.ndarray]:
        """Everything not yet returned: the codes are complete."""
        return self.chunks(final=True)

    def _extend_mel(self, tokens: int, final: bool) -> bool:
        """Make the mel known for the first `tokens` codes, block by block; False if the codes so far
        are not enough (a block needs `mel_context` codes after it, unless they are all there is)."""
        block, f = MEL_BLOCK_TOKENS, self.frames_per_token
        while self.mel_tokens < tokens:
            start = self.mel_tokens
            end = min(start + block, self.num_codes)
            if end <= start or (not final and end + self.mel_context > self.num_codes):
                return False
            codes = torch.cat(self.codes, dim=1)
            self.codes = [codes]
            lo, hi = max(0, start - self.mel_context), min(self.num_codes, end + self.mel_context)
            mel = self.vqgan.codes_to_mel(codes[:, lo:hi])
            self.mel = torch.cat([self.mel, mel[..., (start - lo) * f : (end - lo) * f]], dim=-1)
        return True

    def _audio(self, start: int, end: int) -> np.ndarray:
        """Audio of tokens [start, end): the mel up to `lookahead_tokens` past `end` goes into the generator
        (all of it, as final, when that reaches the end of the codes)."""
        f = self.frames_per_token
        feed_to = (end + self.lookahead_tokens) * f
        final = self.finished and feed_to >= self.num_codes * f
        feed_to = self.mel.shape[-1] if final else feed_to
        if not self.generator_finished and (feed_to > self.mel_fed or final):
            with self.vqgan.decode_precision():
                audio = self.generator.push(self.mel[..., self.mel_fed : feed_to], final)
            self.audio = torch.cat([self.audio, audio.float().reshape(-1)])
            self.mel_fed, self.generator_finished = feed_to, final
        n = (end - start) * f * self.samples_per_frame
        if self.audio.shape[0] < n:
            raise RuntimeError("the generator stream returned less audio than its lag promises")
        chunk, self.audio = self.audio[:n], self.audio[n:]
        return chunk.cpu().numpy()
