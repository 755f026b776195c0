"""The kernels' AVX2 code, which AMD Zen 2/3 machines run, tested on a machine with AVX-512 too: the
kernel, path and quantization tests again in a process whose kernels are built for an AVX2-only CPU
(FISHTTS_KERNEL_ARCH=haswell: no AVX-512, no VNNI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from core.lm.kernels import cpu_kernels_available
from core.tuning import cpu_info
from tests.paths import ROOT

FILES = [
    "tests/core/test_lm_kernels.py",
    "tests/core/test_lm_quantize.py",
    "tests/core/test_lm_paths.py",
    "tests/core/test_lm_prefill_many.py",
    "tests/core/test_lm_sampling.py",
    "tests/core/s1/test_quantize.py",
    "tests/core/s1/test_fused.py",
]


@pytest.mark.skipif(
    not cpu_kernels_available() or "avx512f" not in cpu_info()["flags"],
    reason="needs the kernels and a CPU beyond AVX2 (elsewhere the main run is the AVX2 run)",
)
def test_an_avx2_build_of_the_kernels_passes_their_tests(tmp_path):
    env = {**os.environ, "FISHTTS_KERNEL_ARCH": "haswell", "XDG_CACHE_HOME": str(tmp_path)}
    check = "import torch; from core.lm import kernels; assert kernels.cpu_kernels_available(); "
    check += "assert not torch.ops.fishtts.vnni_available()"  # (really the AVX2 build)
    built = subprocess.run([sys.executable, "-c", check], env=env, cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FILES],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-5000:]
