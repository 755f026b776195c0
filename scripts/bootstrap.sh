#!/usr/bin/env bash
# Create .venv and install fishtts into it on first use (and again when pyproject.toml changes).
# Usage: scripts/bootstrap.sh [EXTRAS]   e.g. "test"; an install that already has those extras is kept.
# TORCH_SPEC picks the torch build (default torch==2.13.0; on a CUDA machine e.g. TORCH_SPEC=torch).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
venv=".venv"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
  echo "[fishtts] creating $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi

# Stamp: line 1 = what was installed from (pyproject.toml + torch spec), line 2 = the extras.
stamp="$venv/.fishtts-installed"
source_id="$(cat pyproject.toml | sha256sum | cut -c1-16) $torch_spec"
if [ -f "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$source_id" ] \
   && { [ -z "$extras" ] || [ "$(sed -n 2p "$stamp")" = "$extras" ]; }; then
  exit 0
fi
echo "[fishtts] installing dependencies into $venv" >&2
# torch first and pinned: an unpinned resolve may pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install -q "$torch_spec"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"$venv/bin/python" -m pip install -q -e "$spec"
printf '%s\n%s\n' "$source_id" "$extras" > "$stamp"
