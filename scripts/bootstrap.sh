#!/usr/bin/env bash
# Create .venv and install fishtts into it on first use (and again when pyproject.toml changes).
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. "test"
# TORCH_SPEC picks the torch build (default torch==2.13.0; on a CUDA machine e.g. TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv=".venv"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[fishtts] creating $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi

stamp="$venv/.fishtts-installed"
want="$(cat pyproject.toml; echo "extras=$extras torch=${TORCH_SPEC:-torch==2.13.0}")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[fishtts] installing dependencies into $venv" >&2
  # torch first and pinned: an unpinned resolve may pull a multi-GB CUDA build.
  "$venv/bin/python" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  spec="."
  [ -n "$extras" ] && spec=".[$extras]"
  "$venv/bin/python" -m pip install -q -e "$spec"
  printf '%s' "$want" > "$stamp"
fi
