#!/usr/bin/env bash
# The official `openai` npm package against `mixtral serve` on the tiny model (loopback, an API
# key). Node.js, npm and tests/node/node_modules come from `make deps` (scripts/install-deps.sh);
# without them this test fails and says so, it does not skip.
set -euo pipefail
BIN=${1:?usage: openai_sdk_test.sh BIN SRC}
SRC=${2:?usage: openai_sdk_test.sh BIN SRC}
command -v node >/dev/null || { echo "FAIL: node is not installed; run 'make deps' (scripts/install-deps.sh)" >&2; exit 1; }
[ -f "$SRC/tests/node/node_modules/openai/package.json" ] ||
  { echo "FAIL: the openai package is not installed in tests/node; run 'make deps' (scripts/install-deps.sh)" >&2; exit 1; }

work=$(mktemp -d)
key=test-key-$RANDOM$RANDOM
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
MIXTRAL_API_KEY=$key "$BIN" serve --model "$SRC/tests/data/tiny-mixtral/hf" --port 0 --threads 2 --max-users 4 \
  >"$work/out" 2>"$work/err" &
server=$!
port=""
for _ in $(seq 1 300); do  # up to 30 s for the listening line
  port=$(sed -n 's/.*listening on http:\/\/[^:]*:\([0-9]*\).*/\1/p' "$work/out")
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || break
  sleep 0.1
done
[ -n "$port" ] || { echo "FAIL: mixtral serve did not start"; cat "$work/err"; exit 1; }
if ! timeout 300 node "$SRC/tests/node/sdk_test.mjs" "http://127.0.0.1:$port/v1" "$key"; then
  echo "--- server stderr (last lines)"; tail -20 "$work/err"; exit 1
fi
