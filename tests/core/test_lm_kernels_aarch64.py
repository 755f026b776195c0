"""The kernels on 64-bit ARM: no aarch64 machine is at hand, so they are compiled for one with Debian's
cross compiler (g++-aarch64-linux-gnu), which catches x86 code left unguarded. On aarch64 the build
runs as on x86 (core/lm/kernels.py), and a failed build falls back to torch's slower path."""

from __future__ import annotations

import shutil
import subprocess
import sysconfig

import pytest
from torch.utils.cpp_extension import include_paths

from core.lm.kernels import SOURCES

CROSS = shutil.which("aarch64-linux-gnu-g++")


@pytest.mark.skipif(CROSS is None, reason="no aarch64 cross compiler (Debian: g++-aarch64-linux-gnu)")
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_the_kernels_compile_for_aarch64(source, tmp_path):
    headers = [f"-I{path}" for path in [*include_paths(), sysconfig.get_paths()["include"]]]
    command = [CROSS, "-std=c++20", "-c", "-fPIC", "-O1", "-march=armv8.2-a", "-fopenmp", *headers]
    built = subprocess.run(
        [*command, str(source), "-o", str(tmp_path / "kernels.o")], capture_output=True, text=True, timeout=600
    )
    assert built.returncode == 0, built.stderr[-4000:]
    assert (tmp_path / "kernels.o").stat().st_size > 0
