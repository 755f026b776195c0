"""The S1 codec's streaming decode in chunks, as a speech stream (core/speech.py) consumes it.

The causal decoder makes a frame's audio final as soon as the frame is decoded, so a chunk is ready
once enough frames are pushed: a small first chunk for an early start, larger ones after (fewer,
bigger GEMMs); once the codes are complete, the rest in chunks of the same sizes (each is one scheduler
task, which holds up the LM's steps while it runs).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import Tensor

from .model import Codec
from .streaming import StreamingDecoder, StreamingEncoder

CHUNK_SCHEDULE = (8, 8, 12, 16)  # frames per chunk (the last repeats); 8 frames ≈ 0.37 s of audio
# A reference clip's encode beside an LM: one chunk per scheduler task (16 frames, 0.74 s of audio: about
# 0.5 s of work for the official codec on 2 vCPUs), so a 30 s clip does not hold up the steps for ~19 s.
ENCODE_CHUNK_FRAMES = 16


class ChunkedDecoder:
    def __init__(self, codec: Codec, schedule: tuple[int, ...] = CHUNK_SCHEDULE, autocast: bool = False):
        """`autocast`: decode under bfloat16 autocast (CUDA, as the original engine)."""
        if not schedule or min(schedule) < 1:
            raise ValueError("chunk sizes must be >= 1 frame")
        self.stream = StreamingDecoder(codec)
        self.codec, self.schedule, self.autocast = codec, schedule, autocast
        self.pending: list[Tensor] = []
        self.chunk_index = 0

    @property
    def waiting(self) -> int:
        return sum(codes.size(-1) for codes in self.pending)

    @property
    def done(self) -> bool:
        return not self.pending

    def push(self, codes: Tensor) -> None:
        """Codes [N, n] (checked like `Codec.decode`)."""
        if codes.size(-1):
            self.pending.append(self.codec.check_codes(torch.as_tensor(codes))[0])

    def _size(self) -> int:
        return self.schedule[min(self.chunk_index, len(self.schedule) - 1)]

    def chunk_ready(self, final: bool = False) -> bool:
        return self.waiting > 0 and (final or self.waiting >= self._size())

    def chunks(self, final: bool = False, limit: int | None = None) -> list[np.ndarray]:
        out = []
        while self.chunk_ready(final) and (limit is None or len(out) < limit):
            codes = torch.cat(self.pending, dim=-1)
            size = min(codes.size(-1), self._size())
            self.pending = [codes[:, size:]] if codes.size(-1) > size else []
            autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
            with autocast:
                audio = self.stream.push(codes[:, :size])
            out.append(audio[0, 0].float().cpu().numpy())
            self.chunk_index += 1
        return out


class ChunkedEncoder:
    """A clip's codes a chunk at a time: `step()` encodes the next chunk; once `done`, `codes` [1 + n, T]
    (those of `Codec.encode`: chunks of whole frames, the last padded as it pads the clip)."""

    def __init__(self, codec: Codec, samples: np.ndarray, frames: int = ENCODE_CHUNK_FRAMES):
        if frames < 1:
            raise ValueError("chunks must be >= 1 frame")
        self.codec, self.samples, self.stream = codec, samples, StreamingEncoder(codec)
        self.chunk = frames * codec.frame_length
        self.start, self.pieces = 0, []

    @property
    def done(self) -> bool:
        return self.start >= self.samples.size

    def step(self) -> None:
        piece = torch.from_numpy(np.ascontiguousarray(self.samples[self.start : self.start + self.chunk]))
        self.pieces.append(self.stream.push(self.codec.pad_to_frames(piece.view(1, 1, -1))))
        self.start += self.chunk

    @property
    def codes(self) -> Tensor:
        return torch.cat(self.pieces, dim=-1)[0].cpu()
