#!/usr/bin/env bash
# Starts `mixtral serve` on a free loopback port and runs scripts/serve_bench.py against it:
# the load phase and the multi-turn chat with the prefix cache, then the chat again on a
# server started with --no-prefix-cache.
#   scripts/serve_bench.sh BIN MODEL [--max-users N] [serve_bench.py options...]
set -euo pipefail
BIN=${1:?usage: serve_bench.sh BIN MODEL [--max-users N] [bench options]}
MODEL=${2:?usage: serve_bench.sh BIN MODEL [--max-users N] [bench options]}
shift 2
USERS=32
if [[ "${1:-}" == "--max-users" ]]; then USERS=$2; shift 2; fi
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
PID=
cleanup() { [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

start() {  # start [serve flags...]: sets PID and PORT
  "$BIN" serve --model "$MODEL" --host 127.0.0.1 --port 0 --max-users "$USERS" --max-queue 256 "$@" \
    >"$TMP/out" 2>"$TMP/err" &
  PID=$!
  for _ in $(seq 1 600); do  # up to 60 s to load
    PORT=$(sed -n 's/.*http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$TMP/out" | head -1)
    [[ -n "$PORT" ]] && return 0
    kill -0 "$PID" 2>/dev/null || { cat "$TMP/err" >&2; exit 1; }
    sleep 0.1
  done
  echo "serve_bench: the server did not start" >&2
  exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

echo "== prefix cache on (--max-users $USERS)"
start
python3 "$HERE/serve_bench.py" --url "http://127.0.0.1:$PORT" "$@"
stop
echo "== --no-prefix-cache: the chat only"
start --no-prefix-cache
python3 "$HERE/serve_bench.py" --url "http://127.0.0.1:$PORT" --skip-load "$@"
stop
