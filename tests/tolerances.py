"""Float tolerances derived from the arithmetic, so that a comparison holds on every CPU a test meets
(AMD AVX2, AMD AVX-512, Intel AVX-512 + AMX): their kernels sum the same products in other orders.

The rounding error of a float sum of K products is about sqrt(K) * eps * (the sum of their magnitudes)
(K * eps at worst), so:
- a matmul is compared element by element against that bound (`matmul_bound`);
- a network's output, whose sums of magnitudes are not at hand, against the same bound with its largest
  |value| standing for them and K its longest reduction (`network_atol`);
- a log of a quantity never gets an absolute tolerance: the log turns an error d at a quiet value S into
  d / S, so the quantity itself is compared (test_vqgan_parity.close_log_spectrum).
"""

from __future__ import annotations

import math

import numpy as np
import torch

FLOAT32_EPS = float(np.finfo(np.float32).eps)
# The AMX int8 kernel rounds each activation row to integers of three signed bytes: at most
# 127 * 65536 + 127 * 256 + 127 (cpu_kernels.cpp's kAmxLimit), scale absmax / AMX_ROW_LIMIT.
AMX_ROW_LIMIT = 127 * 65793
BFLOAT16_EPS = 2.0**-7


# bfloat16 keeps 8 significant bits (relative rounding 2^-9, about -54 dB per rounded value); each of
# the generator's ~40 convs rounds its input and weight once (float32 in between), and the errors add
# up to -52 dB on the parity model (-42 dB on official-size random weights). 40 dB is the bar for
# decoding in bfloat16 unasked ("auto"); a broken cast fails it by far.
MIN_SNR_DB = 40


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    noise = float(((other.astype(np.float64) - reference) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((reference.astype(np.float64) ** 2).sum()) / noise)


def longest_reduction(module: torch.nn.Module) -> int:
    """Products summed into one output of the module's widest linear or convolution (in features x kernel)."""
    return max(p[0].numel() for p in module.parameters() if p.dim() >= 2)


def network_atol(expected, reduction: int, ulps: float = 8.0, eps: float = FLOAT32_EPS) -> float:
    """`ulps` rounding steps of sqrt(reduction)-term sums at the scale of the largest |expected| value."""
    expected = expected.detach().cpu().double().numpy() if torch.is_tensor(expected) else np.asarray(expected)
    return ulps * eps * math.sqrt(reduction) * float(np.abs(expected).max())


def matmul_bound(x: torch.Tensor, weight: torch.Tensor, ulps: float = 4.0) -> torch.Tensor:
    """The element-wise rounding bound of F.linear(x, weight) in float32."""
    return ulps * FLOAT32_EPS * math.sqrt(weight.shape[-1]) * (x.abs().double() @ weight.abs().double().T)


def assert_within(actual, expected, bound) -> None:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    excess = (actual - expected).abs() - torch.as_tensor(bound).double()
    assert bool((excess <= 0).all()), f"off by {float(excess.max()):.3g} beyond the rounding bound"
