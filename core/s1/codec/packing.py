"""Whether the S1 codec decodes on conv weights packed once for oneDNN (convs.conv1d), measured per machine
(convs.choose_packing) on the first two chunks of a stream, as the engine decodes them.

Packing saves oneDNN's reorder of every weight on every call, which the decoder's widest convs pay most
for in a chunk's few frames (its first conv, 1024 -> 1536 channels over 16 frames + history: 24 ms a call
against 4 packed; the first upsampling's phases, 75 MB of float32 weights: 28 against 10 ms; Intel Xeon,
2 vCPUs). A 10 s stream in the engine's chunks: float32 ~7%, bfloat16 ~8% faster there.
"""

from __future__ import annotations

import hashlib

import torch

from ...convs import choose_packing
from ...convs import packed_speedup as convs_packed_speedup
from .chunks import CHUNK_SCHEDULE
from .model import Codec
from .streaming import StreamingDecoder

PROBE_CHUNKS = CHUNK_SCHEDULE[:2]  # frames per chunk of each timed stream


def codec_shape(codec: Codec) -> str:
    return hashlib.sha1(repr(codec.config).encode()).hexdigest()[:12]


def resolve_packed_convs(codec: Codec) -> bool:
    """Set the codec's conv path to the faster one on this machine (measured once, then cached)."""
    key = ["S1 codec", codec_shape(codec), codec.decode_precision]
    return choose_packing(codec, codec.device, key, lambda: packed_speedup(codec))


@torch.inference_mode()
def packed_speedup(codec: Codec) -> float:
    """torch's path's time over packed weights' for a stream of PROBE_CHUNKS of random codes; the codec's
    setting is left as it was."""
    c = codec.config
    frames, generator = sum(PROBE_CHUNKS), torch.Generator().manual_seed(0)
    codes = torch.cat(
        [
            torch.randint(0, c.semantic_codebook_size, (1, 1, frames), generator=generator),
            torch.randint(0, c.codebook_size, (1, c.n_codebooks, frames), generator=generator),
        ],
        dim=1,
    )

    def stream() -> None:
        decoder, start = StreamingDecoder(codec), 0
        for size in PROBE_CHUNKS:
            decoder.push(codes[..., start : start + size])
            start += size

    return convs_packed_speedup(codec, stream)
