"""The 44.1 kHz modded-DAC codec of S1: audio ⇄ codes `[1 + n_codebooks, T]`, one frame per 2048 samples."""

from .model import Codec
from .streaming import StreamingDecoder

__all__ = ["Codec", "StreamingDecoder"]
