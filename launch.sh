#!/usr/bin/env bash
# Start the HTTP API (default model loaded) and the web UI together; Ctrl-C stops both.
#   ./launch.sh                      then open http://127.0.0.1:7860
# Settings (environment variables):
#   FISHTTS_LISTEN           API address HOST:PORT              (127.0.0.1:8000)
#   FISHTTS_DEVICE           cpu, cuda, cuda:N                  (CUDA when available)
#   FISHTTS_CHECKPOINTS_DIR  checkpoints folder                 (checkpoints)
#   FISHTTS_LOAD             model to load at start: "default" (the official files, downloaded when
#                            missing) or "NAME=BODY.json" (a PUT /v1/models body naming other files, e.g.
#                            {"s1": {"folder": "openaudio-s1-mini"}} for OpenAudio S1-mini)
#   FISHTTS_API_KEY          require this key on the API (the UI sends it)
#   GRADIO_SERVER_NAME       web UI address                     (127.0.0.1)
#   GRADIO_SERVER_PORT       web UI port                        (7860)
#   FISHTTS_START_TIMEOUT    seconds to wait for the model and the UI (900)
#   HF_ENDPOINT              a Hugging Face mirror for the download
# Any other FISHTTS_* server setting (see `python -m server --help`) is passed through as well.
set -euo pipefail
start_dir="$PWD"
cd "$(dirname "$0")"

say() { echo "[launch] $*" >&2; }
# A path the user gave relative to where they started the script (defaults stay in the checkout).
from_start() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$start_dir" "$1" ;; esac; }
if [ -n "${FISHTTS_CHECKPOINTS_DIR:-}" ]; then FISHTTS_CHECKPOINTS_DIR="$(from_start "$FISHTTS_CHECKPOINTS_DIR")"; fi
if [ -n "${FISHTTS_REFERENCES_DIR:-}" ]; then export FISHTTS_REFERENCES_DIR="$(from_start "$FISHTTS_REFERENCES_DIR")"; fi
if [[ "${FISHTTS_LOAD:-}" == *=* ]]; then FISHTTS_LOAD="${FISHTTS_LOAD%%=*}=$(from_start "${FISHTTS_LOAD#*=}")"; fi

# Set up .venv on first use (or after pyproject.toml changed); an install with extras (./test.sh's) will do.
scripts/bootstrap.sh ""
py=.venv/bin/python

listen="${FISHTTS_LISTEN:-127.0.0.1:8000}"
checkpoints="${FISHTTS_CHECKPOINTS_DIR:-checkpoints}"
load="${FISHTTS_LOAD:-default}"
ui_host="${GRADIO_SERVER_NAME:-127.0.0.1}"
ui_port="${GRADIO_SERVER_PORT:-7860}"
timeout="${FISHTTS_START_TIMEOUT:-900}"

if ! [[ "$timeout" =~ ^[0-9]+$ ]]; then
  say "FISHTTS_START_TIMEOUT='$timeout' is not a whole number of seconds."
  exit 2
fi
timeout=$((10#$timeout))  # (09 is nine seconds, not a bad octal number)
if [[ "$listen" != *:* ]]; then
  example=""
  if [[ "$listen" =~ ^[0-9]+$ ]]; then example=" (e.g. 127.0.0.1:$listen)"; fi
  say "FISHTTS_LISTEN='$listen' is not HOST:PORT$example."
  exit 2
fi
if [[ "$ui_host" == *:* ]]; then
  say "GRADIO_SERVER_NAME='$ui_host': the web UI cannot listen on an IPv6 address; use 0.0.0.0 or 127.0.0.1."
  exit 2
fi

api_host="${listen%:*}"; api_host="${api_host#[}"; api_host="${api_host%]}"; api_port="${listen##*:}"
# Talk to a wildcard bind over loopback.
case "$api_host" in 0.0.0.0|"") api_client_host=127.0.0.1 ;; ::) api_client_host="[::1]" ;; *:*) api_client_host="[$api_host]" ;; *) api_client_host="$api_host" ;; esac
case "$ui_host" in 0.0.0.0|"") ui_client_host=127.0.0.1 ;; *) ui_client_host="$ui_host" ;; esac
api_url="http://$api_client_host:$api_port"
ui_url="http://$ui_client_host:$ui_port/"

port_free() {  # HOST PORT: can we bind it (as uvicorn and Gradio will)?
  "$py" - "$1" "$2" <<'EOF'
import socket, sys
host, port = sys.argv[1] or "127.0.0.1", int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError:
        sys.exit(1)
EOF
}

check_port() {  # HOST PORT WHAT VARIABLE FORM
  if ! [[ "$2" =~ ^[0-9]{1,5}$ ]] || (( 10#$2 < 1 || 10#$2 > 65535 )); then
    say "'$2' is not a port (1-65535), so the $3 cannot start; set $5."
    exit 2
  fi
  if ! port_free "$1" "$2"; then
    say "port $2 on $1 is already in use, so the $3 cannot start; stop what uses it, or choose another port with $4."
    exit 1
  fi
}
check_port "$api_host" "$api_port" "API" FISHTTS_LISTEN FISHTTS_LISTEN=HOST:PORT
check_port "$ui_host" "$ui_port" "web UI" GRADIO_SERVER_PORT GRADIO_SERVER_PORT=PORT
wildcard() { case "$1" in 0.0.0.0|::|"") return 0 ;; *) return 1 ;; esac; }
if (( 10#$api_port == 10#$ui_port )) && { [ "$api_host" = "$ui_host" ] || wildcard "$api_host" || wildcard "$ui_host"; }; then
  say "the API (FISHTTS_LISTEN) and the web UI (GRADIO_SERVER_PORT) both ask for port $ui_port; give them two."
  exit 2
fi

if [ "$load" = "default" ]; then
  if [ ! -f "$checkpoints/vqgan-v1.pth" ] || [ ! -f "$checkpoints/text2semantic-400m-v0.2-4k.pth" ] \
     || [ ! -f "$checkpoints/tokenizer.json" ]; then
    say "downloading the checkpoints into $checkpoints (HF_ENDPOINT=${HF_ENDPOINT:-https://huggingface.co})"
    .venv/bin/fishtts download --checkpoints-dir "$checkpoints" \
      || { say "the download failed; check the connection, or set HF_ENDPOINT to a mirror (e.g. https://hf-mirror.com)"; exit 1; }
  fi
fi

server_pid=""; ui_pid=""

nap() {  # 0.1 s; in the background, as a Ctrl-C that kills a foreground child makes bash abandon stop()
  sleep 0.1 & wait "$!" || true
}

groups_alive() {  # PGID...: whether any of these process groups still has a process
  local pid
  for pid in "$@"; do kill -0 -- "-$pid" 2>/dev/null && return 0; done
  return 1
}

stop() {  # stop both process groups: TERM, then KILL whatever is left after 15 s (or at a second Ctrl-C)
  local now=0 pids=() pid
  trap - EXIT; trap 'now=1; say "stopping now"' INT TERM
  for pid in $server_pid $ui_pid; do kill -0 "$pid" 2>/dev/null && pids+=("$pid") && kill -TERM -- "-$pid" 2>/dev/null; done
  for _ in $(seq 150); do
    { [ "$now" = 1 ] || ! groups_alive "${pids[@]}"; } && break
    nap
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do groups_alive "${pids[@]}" || break; nap; done  # a killed process takes a moment to go
  wait 2>/dev/null || true
}
trap 'say "stopping"; stop; exit 130' INT
trap 'say "stopping"; stop; exit 143' TERM
trap 'stop' EXIT

# Every wait below also watches the children, so a crash is reported at once.
wait_for() {  # URL DESCRIPTION CHECK: poll until CHECK (python, `r` = requests response) is true
  local deadline=$((SECONDS + timeout))
  until "$py" - "$1" "$3" <<'EOF'
import sys, requests
try:
    r = requests.get(sys.argv[1], timeout=5)
except requests.RequestException:
    sys.exit(1)
sys.exit(0 if eval(sys.argv[2]) else 1)
EOF
  do
    for pid in $server_pid $ui_pid; do
      kill -0 "$pid" 2>/dev/null || { say "$2: a process exited during start-up"; exit 1; }
    done
    [ "$SECONDS" -lt "$deadline" ] || { say "$2: not ready after $timeout s"; exit 1; }
    sleep 1
  done
}

say "starting the API on $listen (model: $load)"
# Job control only while starting a child: it gets its own process group (stopping the group stops
# all it started), while the script's foreground commands stay in the terminal's group for Ctrl-C.
set -m
FISHTTS_CHECKPOINTS_DIR="$checkpoints" "$py" -m server --listen "$listen" --load "$load" &
server_pid=$!
set +m
wait_for "$api_url/v1/health" "API" "r.status_code in (200, 503)"  # 503: a failed load, reported below
say "API is up; loading the model"
name="${load%%=*}"
wait_for "$api_url/v1/health" "model" \
  "r.json().get('load_errors', {}).get('$name') is not None or any(m['name'] == '$name' for m in r.json()['models'])"
if ! "$py" -c "import requests, sys; sys.exit(0 if any(m['name'] == '$name' for m in requests.get('$api_url/v1/health', timeout=5).json()['models']) else 1)"; then
  say "the model failed to load (see the API's log above)"
  exit 1
fi

say "starting the web UI on $ui_host:$ui_port"
set -m
FISHTTS_API_URL="$api_url" GRADIO_SERVER_NAME="$ui_host" GRADIO_SERVER_PORT="$ui_port" "$py" -m webui &
ui_pid=$!
set +m
wait_for "$ui_url" "web UI" "r.status_code == 200"

say "ready: open $ui_url   (API: $api_url/docs; Ctrl-C stops both)"
status=0
wait -n "$server_pid" "$ui_pid" || status=$?
if kill -0 "$server_pid" 2>/dev/null; then say "the web UI exited (status $status); stopping the API"; else say "the API exited (status $status); stopping the web UI"; fi
stop
exit $((status == 0 ? 1 : status))
