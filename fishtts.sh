#!/usr/bin/env bash
# Run the fishtts CLI from a fresh checkout: sets up .venv, downloads the checkpoints when missing.
#   ./fishtts.sh tts --text "你好，世界" -o hello.wav
# It runs in the checkout (where checkpoints/ is), so relative paths in its arguments are the checkout's.
set -euo pipefail
# $FISHTTS_CHECKPOINTS_DIR relative to where it is started, as launch.sh reads it
case "${FISHTTS_CHECKPOINTS_DIR:-/}" in /*) ;; *) export FISHTTS_CHECKPOINTS_DIR="$PWD/$FISHTTS_CHECKPOINTS_DIR" ;; esac
cd "$(dirname "$0")"
scripts/bootstrap.sh ""
# The official v0.2 files, for the commands that read them: not with --model (an OpenAudio S1-mini folder).
s1=""
for arg in "$@"; do case "$arg" in --model|--model=*) s1=1 ;; esac; done
if { [ "${1:-}" = "tts" ] || [ "${1:-}" = "generate" ] || [ "${1:-}" = "vqgan" ]; } && [ -z "$s1" ]; then
  dir="${FISHTTS_CHECKPOINTS_DIR:-checkpoints}"  # (where the CLI looks by default)
  if [ ! -f "$dir/vqgan-v1.pth" ] || [ ! -f "$dir/text2semantic-400m-v0.2-4k.pth" ] || [ ! -f "$dir/tokenizer.json" ]; then
    .venv/bin/fishtts download --checkpoints-dir "$dir"
  fi
fi
exec .venv/bin/fishtts "$@"
