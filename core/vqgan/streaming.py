"""Decode codes to audio while they are still being generated, in chunks that join into the one-shot decode.

The decoder is non-causal, so a chunk of audio is only final once enough codes after it are known. Both
of its networks run as streams (decoder_stream.py) that compute every layer once and hold back what still
waits for its right context: codes -> mel (the WN stack) and mel -> audio (HiFi-GAN). A chunk is ready
once the mel reaches the generator's lookahead past it, which the WN gives once its own lag of codes has
arrived. Codes go into the WN, and mel into the generator, up to points fixed by the chunk schedule (a
chunk's end plus the lookahead and lag it needs, no more: a chunk is out as soon as its codes are), so the
audio never depends on when codes arrived; the chunks concatenate to `VQGAN.decode` of the whole sequence
up to float rounding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .config import VQGANConfig
from .decoder_stream import GeneratorStream, WNStream, generator_lag_samples, wn_lag_frames
from .model import VQGAN

# Chunk sizes in tokens (the last repeats): a small first one for an early start, then sizes that grow
# slowly enough to stay ahead of playback up to a real-time factor of ~0.75 (chunk k + 1 must be made
# while chunks 0..k play). 16 tokens = 0.74 s of audio.
CHUNK_SCHEDULE = (8, 8, 12, 16)
# For audio returned whole (not streamed): no playback to stay ahead of. Each chunk is one scheduler task
# and holds up the LM's steps while it runs, so not larger than that: official-size VQGAN, 20 s of codes
# (AMD EPYC, 2 vCPUs), one piece 7.1-7.7 s, chunks of 256 / 64 / 32 / 16 tokens 6.5-7.7 / 5.7-6.2 /
# 5.9-6.1 / 6.3-6.8 s in all, 3.8-4.7 / 0.9-1.1 / 0.5-0.6 / 0.2-0.3 s for the longest chunk.
WHOLE_SCHEDULE = (32,)


def generator_lookahead_frames(config: VQGANConfig) -> int:
    """Mel frames the generator stream needs past a frame before that frame's audio is out."""
    return math.ceil(generator_lag_samples(config.generator) / math.prod(config.generator.upsample_rates))


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
        self.wn_lag = wn_lag_frames(cfg.decoder)  # mel frames short of the codes fed
        self.lookahead = generator_lookahead_frames(cfg)  # mel frames a chunk's audio needs past its end
        self.mel_stream, self.generator = WNStream(vqgan.decoder), GeneratorStream(vqgan.generator)
        self.feature_channels = cfg.decoder.hidden_channels
        self.schedule = schedule
        self.codes: list[Tensor] = []  # pushed, not yet fed to the WN stream
        self.num_codes = 0
        self.codes_fed = 0  # codes pushed into the WN stream
        self.mel = torch.zeros(1, cfg.decoder.out_channels, 0, device=vqgan.device)  # final mel frames
        self.mel_finished = False  # the WN stream has had the last codes (as final)
        self.mel_fed = 0  # mel frames pushed into the generator
        self.generator_finished = False
        self.audio = torch.zeros(0, device=vqgan.device)  # generator output not yet returned
        self.emitted = 0  # tokens whose audio has been returned
        self.chunk_index = 0
        self.finished = False

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
        needed = self._mel_needed(self.emitted + self.schedule[min(self.chunk_index, len(self.schedule) - 1)])
        if self.mel.shape[-1] >= needed:
            return True
        return self._codes_for_mel(needed) <= self.num_codes

    def _mel_needed(self, end: int) -> int:
        """Mel frames the audio of tokens up to `end` needs."""
        return end * self.frames_per_token + self.lookahead

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
            if not self._extend_mel(self._mel_needed(end), final):
                break
            out.append(self._audio(self.emitted, end))
            self.emitted = end
            self.chunk_index += 1
        return out

    def finish(self) -> list[np.ndarray]:
        """Everything not yet returned: the codes are complete."""
        return self.chunks(final=True)

    def _codes_for_mel(self, frames: int) -> int:
        """Codes the WN stream needs before `frames` mel frames are final (it gives fed * 4 - lag)."""
        return -(-(frames + self.wn_lag) // self.frames_per_token)

    def _extend_mel(self, frames: int, final: bool) -> bool:
        """Make the mel known up to `frames` (all of it once it reaches the end of final codes); False if
        the codes so far are not enough. The WN gets exactly the codes `frames` needs, a point fixed by
        the chunk schedule (so the audio never depends on when codes arrived); the rest once final."""
        if self.mel.shape[-1] >= frames or self.mel_finished:
            return True
        codes = self._codes_for_mel(frames)
        if codes <= self.num_codes:
            self._feed_mel(codes, final=False)
        elif final:
            self._feed_mel(self.num_codes, final=True)
        else:
            return False
        if self.mel.shape[-1] < frames and not self.mel_finished:
            raise RuntimeError("the WN stream returned fewer mel frames than its lag promises")
        return True

    def _feed_mel(self, end: int, final: bool) -> None:
        waiting = torch.cat(self.codes, dim=1)  # the codes pushed since the last feed
        self.codes = [waiting[:, end - self.codes_fed :]]
        if end > self.codes_fed:
            features = self.vqgan.codes_to_features(waiting[:, : end - self.codes_fed])
        else:  # (only the last, empty piece: it flushes what waited for the end)
            features = self.mel.new_zeros(1, self.feature_channels, 0)
        mel = self.mel_stream.push(features, final)
        self.mel = torch.cat([self.mel, mel], dim=-1)
        self.codes_fed, self.mel_finished = end, final

    def _audio(self, start: int, end: int) -> np.ndarray:
        """Audio of tokens [start, end): the mel it needs goes into the generator (all of it, as final,
        when that reaches the end of the codes)."""
        feed_to = self._mel_needed(end)
        final = self.finished and feed_to >= self.num_codes * self.frames_per_token
        feed_to = self.mel.shape[-1] if final else feed_to
        if not self.generator_finished and (feed_to > self.mel_fed or final):
            audio = self.generator.push(self.mel[..., self.mel_fed : feed_to], final)
            self.audio = torch.cat([self.audio, audio.reshape(-1)])
            self.mel_fed, self.generator_finished = feed_to, final
        n = (end - start) * self.frames_per_token * self.samples_per_frame
        if self.audio.shape[0] < n:
            raise RuntimeError("the generator stream returned less audio than its lag promises")
        chunk, self.audio = self.audio[:n], self.audio[n:]
        return chunk.cpu().numpy()
