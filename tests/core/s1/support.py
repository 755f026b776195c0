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

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.paths import DATA

S1_DATA = DATA / "s1"
S1_FILES = S1_DATA / "checkpoint"  # the folder's small files: configs and tokenizer
S1_WEIGHTS = S1_DATA / "weights"  # its two weight files' tensors, packed (pack_state)
WEIGHT_FILES = {"model.pth": ("model.npz",), "codec.pth": ("codec_encoder.npz", "codec_decoder.npz")}
RELATIVE_TOLERANCE = 1e-5


# The golden weights are the original's random ones, so the tests cannot make them; stored as
# checkpoints they took 13 MB. Packed, each tensor's bytes are split into planes (the bytes holding
# sign and exponent compress well, the mantissa's do not) and deflated: 9 MB, the codec in two files
# (the encoder's side and the rest). The tests get the folder laid out as the official one, its
# model.pth and codec.pth written back key for key (the same order, dtypes and bits) with torch.save.


def pack_state(state: dict[str, torch.Tensor], positions: list[int]) -> dict[str, np.ndarray]:
    """Arrays for np.savez_compressed: per tensor its byte planes [itemsize, numel], plus the keys, dtypes,
    shapes and their positions in the state dict (`positions`, one per tensor)."""
    arrays, meta = {}, []
    for i, (position, (key, tensor)) in enumerate(zip(positions, state.items(), strict=True)):
        raw = tensor.contiguous().view(-1).view(torch.uint8).numpy()
        arrays[f"t{i}"] = raw.reshape(-1, tensor.element_size()).T.copy()
        meta.append([position, key, str(tensor.dtype).removeprefix("torch."), list(tensor.shape)])
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return arrays


def unpack_state(paths: list[Path]) -> dict[str, torch.Tensor]:
    entries = []
    for path in paths:
        with np.load(path) as packed:
            for i, (position, key, dtype, shape) in enumerate(json.loads(packed["meta"].tobytes())):
                raw = np.ascontiguousarray(packed[f"t{i}"].T).reshape(-1)
                tensor = torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape)
                entries.append((position, key, tensor))
    return {key: tensor for _, key, tensor in sorted(entries, key=lambda e: e[0])}


def golden_checkpoint() -> Path:
    """The golden S1-mini folder, built once per content in the system's temp folder."""
    sources = sorted(S1_FILES.iterdir()) + [S1_WEIGHTS / n for names in WEIGHT_FILES.values() for n in names]
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / "fishtts-tests" / f"s1-golden-{digest}"
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=folder.parent))
    shutil.copytree(S1_FILES, building, dirs_exist_ok=True)
    for name, packed in WEIGHT_FILES.items():
        torch.save(unpack_state([S1_WEIGHTS / n for n in packed]), building / name)
    try:
        os.rename(building, folder)  # whole or not at all (another test process may have built it)
    except OSError:
        shutil.rmtree(building, ignore_errors=True)
    return folder


S1_CHECKPOINT = golden_checkpoint()

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
