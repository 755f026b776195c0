"""Shared pieces of the S1 tests: the golden data of `tests/data/s1` (copied from shared/parity-s1) and
the float tolerance.

Tolerance: the golden arrays are float32 runs of the original; against a float64 run of the same
code they differ by at most 1.1e-6 × the array's largest magnitude (README: latent 2.8e-6 at 2.55,
logits 5.5e-6 at 5.76, audio 3.7e-8 at 0.074). Our float32 run carries an error of the same order on
any CPU (other GEMM/conv kernels round differently), so the two can differ by ~2.2e-6 × scale; the
bound used, 1e-5 × scale (≈ 84 float32 ulps at that scale), keeps ~4.5× headroom and still catches
any real mistake (a wrong RoPE table alone moves logits by 2.6e-2).
"""

from __future__ import annotations

import json

import numpy as np
import torch

from tests.paths import DATA

S1_DATA = DATA / "s1"
S1_CHECKPOINT = S1_DATA / "checkpoint"
RELATIVE_TOLERANCE = 1e-5

REF_TEXT = "(calm) This is the reference transcript. 参考音频。"
REF2_TEXT = "第二段参考。テストです。"
TARGET_TEXT = "Hello, 世界! こんにちは。"

# name → (torch seed, temperature, top_p, repetition_penalty), max_new_tokens 24 (README "Generation cases")
GENERATION_CASES = {
    "greedy": (0, 0.7, 1e-6, 1.0),
    "greedy_rep1.5": (0, 0.7, 1e-6, 1.5),
    "sample_seed42_cli": (42, 0.8, 0.8, 1.1),
    "sample_seed7_t0.7p0.7r1.2": (7, 0.7, 0.7, 1.2),
}
MAX_NEW_FRAMES = 24


def dual_ar_cases() -> dict[str, np.ndarray]:
    return dict(np.load(S1_DATA / "dual_ar_cases.npz"))


def codec_cases() -> dict[str, np.ndarray]:
    return dict(np.load(S1_DATA / "codec_cases.npz"))


def tokenizer_cases() -> dict:
    return json.loads((S1_DATA / "tokenizer_cases.json").read_text(encoding="utf-8"))


def assert_close(actual: torch.Tensor | np.ndarray, expected: np.ndarray) -> float:
    """Max |actual − expected| within RELATIVE_TOLERANCE × max|expected|; returns the difference."""
    actual = actual.detach().float().cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    difference = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    bound = RELATIVE_TOLERANCE * float(np.abs(expected).max())
    assert difference <= bound, f"max difference {difference:.3g} > tolerance {bound:.3g}"
    return difference
