#!/usr/bin/env bash
# The checks that need a CUDA GPU (CI has none): the CUDA tests, then the GPU benchmarks of both model
# families' LM decode (compiled and eager, bfloat16). Logs go to OUT_DIR.
#   scripts/cuda_check.sh [OUT_DIR]      (default: out/cuda-check)
# Uses the python3 that has a CUDA torch. WHEELS=DIR first installs the wheels in DIR (without their
# dependencies) into a folder put on PYTHONPATH: for a GPU machine with torch but not this project's
# other dependencies and no network.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-out/cuda-check}"
mkdir -p "$out"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fishtts-site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/fishtts-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FISHTTS_VQGAN_PRECISION="${FISHTTS_VQGAN_PRECISION:-float32}"  # as the test suite pins it
if ! python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "[fishtts] python3's torch sees no CUDA GPU: nothing to check here" >&2
  exit 1
fi
{ nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; python3 -c "import torch; print(torch.__version__)"; } \
  | tee "$out/device.txt"
timeout 200 python3 -m pytest -q -p no:cacheprovider \
  tests/core/test_cuda.py tests/core/s1/test_cuda.py tests/server/test_cuda_server.py 2>&1 | tee "$out/tests.txt" | tail -15
timeout 220 python3 -m bench.s1 --device cuda --runs 2 --only lm --formats bfloat16+compile,bfloat16 2>&1 \
  | tee "$out/bench-s1.txt" | grep -v '^{' | tail -14
timeout 160 python3 -m bench --device cuda --only lm --runs 2 --variants bfloat16+compile,bfloat16 2>&1 \
  | tee "$out/bench-v02.txt" | grep -v '^{' | tail -12
