"""Whether the VQGAN decodes on conv weights packed once for oneDNN (convs.conv1d), measured per machine.

Packing saves oneDNN's reorder of every weight on every call, which is most of a streamed chunk's small
convs in bfloat16 on AMX (bench.streams, Intel Xeon: the VQGAN's share 1.50-1.55 -> 1.29-1.35 s). Where
oneDNN picks the weight's layout by the input's length (float32 under AVX2), a packed weight is
reordered again, and oneDNN built a transposed conv's kernel anew on each such call: streamed chunks ran
no faster, some 10% slower. So a stream of PROBE_CODES codes is decoded both ways, chunk by chunk as
they are generated, once per machine, generator shape and precision, and the faster kept (packing only
when it is MIN_SPEEDUP faster) in ~/.cache/fishtts/vqgan_convs.json. The results are the same either way.
"""

from __future__ import annotations

import logging
import math
import time

import torch

from ..tuning import measured_choice
from .model import VQGAN
from .precision import generator_shape
from .streaming import StreamingDecoder

log = logging.getLogger(__name__)

MIN_SPEEDUP = 1.05  # packing must beat torch's own path by this much (a tie keeps torch's)
PROBE_CODES = 36  # codes per timed stream: chunks of 8, 8 and 12 tokens, then the rest as the stream ends
RUNS = 2  # timed streams per setting (the best counts), taken in turns after a warm-up of each
METHOD = 1  # how the timings are taken: a choice cached by another method is measured again
CACHE_NAME = "vqgan_convs.json"


def resolve_packed_convs(vqgan: VQGAN) -> bool:
    """Whether this VQGAN decodes faster on packed conv weights on this machine (measured once, then cached)."""
    if vqgan.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False

    def measure() -> bool:
        speedup = packed_speedup(vqgan)
        chosen = speedup >= MIN_SPEEDUP
        log.info("VQGAN convs on packed weights: %s (measured %.2fx torch's own path here)", chosen, speedup)
        return chosen

    key = [f"method={METHOD}", generator_shape(vqgan), vqgan.decode_precision]
    return measured_choice(CACHE_NAME, key, (False, True), measure)


@torch.inference_mode()
def packed_speedup(vqgan: VQGAN) -> float:
    """torch's path's time over packed weights' for a stream of PROBE_CODES codes, pushed a code at a time
    and decoded as chunks become final (as a request streams); the VQGAN's setting is left as it was."""
    vq = vqgan.config.vq
    codes = torch.randint(
        0, vq.codebook_size, (vq.codebook_groups, PROBE_CODES), generator=torch.Generator().manual_seed(0)
    )
    chosen = vqgan.packed_convs
    best = {False: math.inf, True: math.inf}
    try:
        for round_ in range(1 + RUNS):  # round 0 warms up (oneDNN's kernels, the packed weights)
            for packed in best:
                vqgan.packed_convs = packed
                start = time.perf_counter()
                decoder = StreamingDecoder(vqgan)
                for i in range(PROBE_CODES):
                    decoder.push(codes[:, i : i + 1])
                    decoder.chunks()
                decoder.finish()
                if round_:
                    best[packed] = min(best[packed], time.perf_counter() - start)
    finally:
        vqgan.packed_convs = chosen
    return best[False] / best[True]
