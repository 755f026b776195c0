#!/usr/bin/env bash
# Run the checks and the test suite from a fresh checkout: system packages, .venv with test extras,
# then ruff (lint + format), the import contracts (pyproject.toml), and pytest.
#   ./test.sh [PYTEST ARGS]
set -euo pipefail
cd "$(dirname "$0")"
if [ -f .ci/apt-packages.txt ]; then
  missing=()
  while read -r pkg; do
    [ -z "$pkg" ] || [ "${pkg:0:1}" = "#" ] && continue
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done < .ci/apt-packages.txt
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "[fishtts] installing system packages: ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
scripts/bootstrap.sh "test"
scripts/check.sh .venv/bin
exec .venv/bin/python -m pytest "$@"
