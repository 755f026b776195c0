"""The kernels' AVX2 code, which AMD Zen 2/3 machines run, tested on a machine with AVX-512 too: the
kernel, path and quantization tests again in a process whose kernels are built for an AVX2-only CPU
(FISHTTS_KERNEL_ARCH=haswell: no AVX-512, no VNNI)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

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


# int8 weights against int16 activations (paths "kernel-vnni-*") and int4 weights (one weight block or two
# at a time: "-4r"): rows of every count a step batches, an outlier and an all-zero row. (Only whole
# 64-groups: other widths take the float-activation kernel, whose scalar tail GCC fuses into multiply-adds
# or not depending on -mtune.)
INTEGER_DOT_CASES = """
import sys, torch
from core.lm import kernels, paths
from core.lm.quantize import quantize_int4
assert kernels.cpu_kernels_available()
gen = torch.Generator().manual_seed(5)
out = {}
for width in (64, 1024, 2816):
    w = torch.randint(-127, 128, (53, width), dtype=torch.int8, generator=gen)
    scales = torch.rand(53, generator=gen)
    packed, int4_scales, offsets = quantize_int4(torch.randn(53, width, generator=gen))
    x = torch.randn(9, width, generator=gen) * 3
    x[2, 7], x[4] = 1e4, 0.0
    for rows in range(1, 10):
        out[f"int16 {width}/{rows}"] = torch.ops.fishtts.linear_rows_int8_vnni(x[:rows], w, scales)
    for setting in ("kernel", "kernel-t0-4r", "kernel-l2"):
        with paths.using("int4", decode=setting, batch_decode=setting):
            for rows in range(1, 10):
                y = torch.ops.fishtts.linear_rows_int4(x[:rows], packed, int4_scales, offsets)
                out[f"int4 {setting} {width}/{rows}"] = y
torch.save(out, sys.argv[1])
"""


@pytest.mark.skipif(
    not cpu_kernels_available() or "avx512_vnni" not in cpu_info()["flags"],
    reason="needs the kernels and a CPU with AVX512-VNNI to compare the AVX2 build with",
)
def test_the_avx2_build_computes_the_vnni_kernels_bits(tmp_path):
    """AVX2 sums the int16 activations' products with vpmaddwd into the lanes vpdpwssd fills, and int4's
    nibble products with vpmaddubsw where VNNI has vpdpbusd: integer sums, so the int8 "kernel-vnni" paths
    and int4's kernel must give the same bits on an AVX2-only CPU as with VNNI."""
    results = {}
    for arch in ("native", "haswell"):
        env = {**os.environ, "FISHTTS_KERNEL_ARCH": arch, "XDG_CACHE_HOME": str(tmp_path)}
        path = tmp_path / f"{arch}.pt"
        run = subprocess.run(
            [sys.executable, "-c", INTEGER_DOT_CASES, str(path)], env=env, cwd=ROOT, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr[-3000:]
        results[arch] = torch.load(path, weights_only=True)
    assert results["native"].keys() == results["haswell"].keys()
    for case, expected in results["native"].items():
        assert torch.equal(results["haswell"][case], expected), case
