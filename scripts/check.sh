#!/usr/bin/env bash
# The habits CI enforces before the tests: ruff lint, ruff format check, import-linter contracts.
#   scripts/check.sh [BIN_DIR]   (default: .venv/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-.venv/bin}"
echo "[fishtts] ruff check" >&2
"$bin/ruff" check .
echo "[fishtts] ruff format --check" >&2
"$bin/ruff" format --check .
echo "[fishtts] import contracts" >&2
"$bin/lint-imports"
