"""Whether the VQGAN decodes on conv weights packed once for oneDNN (convs.conv1d), measured per machine
(convs.choose_packing) on a stream of PROBE_CODES codes decoded chunk by chunk as they are generated.

Packing saves oneDNN's reorder of every weight on every call, which is most of a streamed chunk's small
convs in bfloat16 on AMX (bench.streams, Intel Xeon: the VQGAN's share 1.50-1.55 -> 1.29-1.35 s). Where
oneDNN picks the weight's layout by the input's length (float32 under AVX2), a packed weight is
reordered again, and oneDNN built a transposed conv's kernel anew on each such call: streamed chunks ran
no faster, some 10% slower.
"""

from __future__ import annotations

import torch

from ..convs import choose_packing
from ..convs import packed_speedup as convs_packed_speedup
from .model import VQGAN
from .precision import generator_shape
from .streaming import StreamingDecoder

PROBE_CODES = 36  # codes per timed stream: chunks of 8, 8 and 12 tokens, then the rest as the stream ends


def resolve_packed_convs(vqgan: VQGAN) -> bool:
    """Set the VQGAN's conv path to the faster one on this machine (measured once, then cached)."""
    key = ["VQGAN", generator_shape(vqgan), vqgan.decode_precision]
    return choose_packing(vqgan, vqgan.device, key, lambda: packed_speedup(vqgan))


@torch.inference_mode()
def packed_speedup(vqgan: VQGAN) -> float:
    """torch's path's time over packed weights' for a stream of PROBE_CODES codes, pushed a code at a time
    and decoded as chunks become final (as a request streams); the VQGAN's setting is left as it was."""
    vq = vqgan.config.vq
    codes = torch.randint(
        0, vq.codebook_size, (vq.codebook_groups, PROBE_CODES), generator=torch.Generator().manual_seed(0)
    )

    def stream() -> None:
        decoder = StreamingDecoder(vqgan)
        for i in range(PROBE_CODES):
            decoder.push(codes[:, i : i + 1])
            decoder.chunks()
        decoder.finish()

    return convs_packed_speedup(vqgan, stream)
