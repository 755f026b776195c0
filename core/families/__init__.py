"""Model families behind the engine's door: what differs between Fish Speech v0.2 and OpenAudio S1-mini.

The engine (core/engine.py) owns everything they share: the scheduler thread, requests, streams,
samples and errors. A family says how its codec encodes and decodes, how a request becomes prompts
and sequences, and how its LM steps (a `Stepper` for core/scheduler.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from ..checkpoints import FAMILIES, FISH_SPEECH_V02, OPENAUDIO_S1_MINI
from ..frontend import PromptText
from ..request import SynthesisRequest

if TYPE_CHECKING:
    from ..scheduler import Stepper
    from ..speech import ChunkDecoder, StreamedSequence


class ChunkEncoder(Protocol):
    done: bool

    def step(self) -> None:
        """Encode the next chunk."""

    @property
    def codes(self) -> torch.Tensor:
        """[codebooks, T], once done."""


class ModelFamily(Protocol):
    name: str
    phonemes: bool  # g2p, the language order and speaker tags apply to its prompts
    lm: torch.nn.Module | None
    has_codec: bool

    def describe(self) -> dict:
        """EngineInfo's model fields (precision, quantize, context, codebooks, rates, lm_paths ...)."""

    def compile_decode(self, slots: int) -> bool:
        """Compile the decode (at load, for the static scheduler's `slots` rows on CUDA); False where it does
        not apply or failed: the model then decodes eagerly."""

    def stepper(self) -> Stepper: ...

    def encode(self, audio: np.ndarray) -> np.ndarray:
        """Mono float32 audio at the codec's rate → codes [codebooks, T] int64."""

    def chunk_encoder(self, audio: np.ndarray) -> ChunkEncoder | None:
        """`encode` a chunk at a time (the same codes), or None where the codec encodes in one piece."""

    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Codes [codebooks, T] → mono float32 audio."""

    def chunk_decoder(self, streamed: bool = True) -> ChunkDecoder:
        """A segment's codec decoder; `streamed=False`: its audio is returned whole (no hurry for a first chunk)."""

    def pieces(self, request: SynthesisRequest, reference_frames: int, max_segment_weight: int) -> list[PromptText]:
        """The pieces the request's text is synthesized in."""

    def whole_piece(self, request: SynthesisRequest) -> PromptText:
        """The request's text read as one piece."""

    def prompt(self, piece: PromptText, request: SynthesisRequest, codes: np.ndarray | None) -> torch.Tensor: ...

    def sequences(
        self, request: SynthesisRequest, prompt: torch.Tensor, generators: list, ignore_stop: bool
    ) -> list[StreamedSequence]: ...

    def codes(self, sequence, prompt: torch.Tensor) -> np.ndarray:
        """A finished sequence's codes [codebooks, n] for the codec."""


__all__ = ["FAMILIES", "FISH_SPEECH_V02", "OPENAUDIO_S1_MINI", "ModelFamily"]
