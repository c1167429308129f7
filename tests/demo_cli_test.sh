#!/usr/bin/env bash
# `mixtral demo` end to end on the tiny model: text output and summary, the limits and the RAM
# check, truncation notes, the long-context prompt at full size, mode equivalence, the live
# view on a pseudo-terminal, and scripts/demo.sh (what `make demo` runs).
# Usage: bash tests/demo_cli_test.sh <mixtral-binary> <source-dir>
set -uo pipefail
bin=${1:?binary}
src=${2:?source dir}
model=$src/tests/data/tiny-mixtral/hf
tmp=$(mktemp -d /tmp/mixtral-demo-cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}
# expect_ok NAME CMD...: runs CMD (stdout to $tmp/out, stderr to $tmp/err), wants exit 0.
expect_ok() {
  local name=$1
  shift
  "$@" >"$tmp/out" 2>"$tmp/err" </dev/null || { fail "$name: exit $? ($(head -c 400 "$tmp/err"))"; return 1; }
}
# expect_error NAME PATTERN CMD...: wants exit 1 and PATTERN (grep -F) on stderr, one line.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err" </dev/null
  local rc=$?
  [ "$rc" -eq 1 ] || fail "$name: exit $rc, wanted 1"
  grep -qF -- "$pattern" "$tmp/err" || fail "$name: stderr lacks '$pattern': $(cat "$tmp/err")"
  grep -q "^mixtral demo: error: " "$tmp/err" || fail "$name: not one clear error: $(cat "$tmp/err")"
}
has() { grep -qF -- "$2" "$tmp/out" || fail "$1: output lacks '$2'"; }

demo=("$bin" demo --model "$model" --threads 2)

# Help.
expect_ok help "$bin" demo --help && for opt in --prompts --instruct --mode --max-new-tokens --context \
  --batch --long-context --prefill-cap --json --temperature --threads --kv-dtype; do has help "$opt"; done
expect_ok top-help "$bin" --help && has top-help demo

# Default: the 32 general prompts, 32 users, 4k, prefill; text at the end when not a TTY.
if expect_ok default "${demo[@]}" -n 8; then
  [ "$(grep -c '^=== user ' "$tmp/out")" -eq 32 ] || fail "default: wanted 32 users' outputs"
  has default "demo: 32 users, context 4096, mode prefill, greedy, up to 8 new tokens"
  has default "The old lighthouse keeper climbed the stairs one last time and"
  for l in "prefill:" "first token: mean" "tokens/s total" "tokens/s per user (mean)" "memory:" "ttft(s)"; do
    has default "$l"
  done
  [ "$(grep -c ' length$' "$tmp/out")" -eq 32 ] || fail "default: wanted 32 per-user rows"
fi

# Limits: batch vs context, the context's range.
expect_error over-batch "at most 4 users" "${demo[@]}" --context 32k --batch 5
expect_error over-batch-32 "at most 32 users" "${demo[@]}" --batch 33
expect_error over-context "32k" "${demo[@]}" --context 64k --batch 1
expect_error bad-context "--context must be a token count" "${demo[@]}" --context big
expect_error bad-mode "--mode must be prefill or decode-only" "${demo[@]}" --mode fast
expect_error no-room "leaves no room" "${demo[@]}" --context 256 -n 256
expect_error both-prompts "not both" "${demo[@]}" --long-context --prompts "$src/demo/prompts-general.json"
expect_error missing-prompts "cannot open prompts file" "${demo[@]}" --prompts "$tmp/none.json"

# The RAM check, with a small limit: the numbers and what would fit.
expect_error ram-batch "not enough memory for 32 users" env MIXTRAL_DEMO_MEM_LIMIT_MB=100 "${demo[@]}"
grep -qF "MIXTRAL_DEMO_MEM_LIMIT_MB" "$tmp/err" || fail "ram-batch: source not named"
grep -qE "at this context at most --batch [0-9]+ fits" "$tmp/err" || fail "ram-batch: no batch that fits: $(cat "$tmp/err")"
grep -qE "weights [0-9.]+ MiB \+ KV cache [0-9.]+ MiB \+ activations" "$tmp/err" || fail "ram-batch: numbers missing"
expect_error ram-none "the weights alone take" env MIXTRAL_DEMO_MEM_LIMIT_MB=1 "${demo[@]}"
expect_ok ram-ok env MIXTRAL_DEMO_MEM_LIMIT_MB=100000 "${demo[@]}" -n 2 --batch 2

# Truncation: the question at the end survives, and the output says who was cut.
{
  printf '[{"prompt": "'
  for i in $(seq 1 80); do printf 'Line %d of a long preamble. ' "$i"; done
  printf 'What is the capital of France?"}, {"prompt": "Short one."}]'
} >"$tmp/long.json"
if expect_ok truncate "${demo[@]}" --prompts "$tmp/long.json" --context 128 -n 8 --instruct; then
  grep -qE "^note: user 1: prompt cut from [0-9]+ to 1[12][0-9] tokens to fit the context \(cut before the \[INST\] wrapping" \
    "$tmp/out" || fail "truncate: no note for user 1: $(grep note "$tmp/out")"
  grep -q "^note: user 2" "$tmp/out" && fail "truncate: user 2 should not be cut"
  has truncate "truncated,"
fi

# Long context at full size: the first 16384 tokens of the novel, a 32k context, 4 users by
# default (one here, to keep the test short).
if expect_ok long-full "${demo[@]}" --long-context --batch 1 -n 3; then
  n=$(grep -oE "first 16384 tokens of a-tale-of-two-cities.txt \(([0-9]+) prompt tokens\)" "$tmp/out" | grep -oE "[0-9]+ prompt" | grep -oE "[0-9]+")
  { [ -n "$n" ] && [ "$n" -ge 16392 ] && [ "$n" -le 16408 ]; } || fail "long-full: prompt tokens '$n'"
  has long-full "demo: 1 users, context 32768, mode prefill, long context"
  has long-full "Which book is the following excerpt from?"
fi
expect_error long-batch "at most 4 users" "${demo[@]}" --long-context --batch 8

# Modes give the same greedy text: prefill, decode-only and a prefill cap (the book prompt with a
# shorter excerpt, instruct-wrapped, 3 users).
outputs() { sed '/^demo: /,$d' "$tmp/out"; }
short=(--long-context --instruct --book-tokens 300 --context 4k --batch 3 -n 6)
expect_ok mode-prefill "${demo[@]}" "${short[@]}" && outputs >"$tmp/prefill.txt"
expect_ok mode-decode "${demo[@]}" "${short[@]}" --mode decode-only && outputs >"$tmp/decode.txt"
expect_ok mode-cap "${demo[@]}" "${short[@]}" --prefill-cap 256 && outputs >"$tmp/cap.txt"
has mode-cap "prefill cap 256"
[ -s "$tmp/prefill.txt" ] && cmp -s "$tmp/prefill.txt" "$tmp/decode.txt" || fail "decode-only text differs from prefill"
cmp -s "$tmp/prefill.txt" "$tmp/cap.txt" || fail "prefill-cap text differs from prefill"
grep -q "\[/INST\]" "$tmp/prefill.txt" && fail "prompts should be shown without [INST] tags"

# The live view on a pseudo-terminal: ANSI redraws, lines within the width.
if command -v script >/dev/null; then
  TERM=xterm script -qec "stty cols 50 rows 40; '$bin' demo --model '$model' --threads 2 -n 16 --batch 4" \
    "$tmp/tty.log" >/dev/null 2>&1 </dev/null || fail "tty: exit $?"
  grep -q $'\x1b\[4A' "$tmp/tty.log" || fail "tty: no cursor-up redraw"
  grep -q $'\x1b\[2K  1 [>=] ' "$tmp/tty.log" || fail "tty: no user line"
  grep -q "^=== user" "$tmp/tty.log" && fail "tty: printed the end-of-run text instead of the live view"
  long=$(tr '\r' '\n' <"$tmp/tty.log" | sed 's/\x1b\[[0-9]*[AK]//g' | grep '^  [0-9] [>=.]' | awk '{ if (length($0) > 49) print }' | head -1)
  # awk counts bytes here; only flag lines that are over in characters too.
  if [ -n "$long" ] && [ "$(printf '%s' "$long" | wc -m)" -gt 49 ]; then fail "tty: line wider than the terminal: $long"; fi
  grep -q "decode: " "$tmp/tty.log" || fail "tty: no summary"
else
  echo "skip: no script(1) for the TTY check"
fi

# scripts/demo.sh: the trained default model (models/tale-mixtral) and its Dickens prompts, in
# well under 2 minutes.
start=$(date +%s)
if expect_ok demo-sh bash "$src/scripts/demo.sh" "$bin" ""; then
  has demo-sh "demo: 16 users, context 512, mode prefill, temperature 0.7, up to 128 new tokens"
  has demo-sh "Madame Defarge sat knitting"
  [ $(($(date +%s) - start)) -lt 120 ] || fail "demo-sh: took $(($(date +%s) - start)) s"
fi
if DEMO_ARGS="-n 2 --batch 2" expect_ok demo-sh-model bash "$src/scripts/demo.sh" "$bin" "$src/tests/data/tiny-mixtral/mistral"; then
  has demo-sh-model "instruct"
  has demo-sh-model "What causes the seasons on Earth?"
fi

if [ "$failures" -ne 0 ]; then
  echo "$failures failure(s)" >&2
  exit 1
fi
echo "demo CLI: all checks passed"
