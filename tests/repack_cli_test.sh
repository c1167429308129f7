#!/usr/bin/env bash
# `mixtral repack` output end to end: a progress bar with bytes and ETA on a terminal (run under
# a pseudo-terminal with script(1)), plain per-file lines otherwise, and the cache hit message.
# Usage: bash tests/repack_cli_test.sh <mixtral-binary> <source-dir>
set -uo pipefail
bin=${1:?binary}
src=${2:?source dir}
model=$src/tests/data/tiny-mixtral/hf
tmp=$(mktemp -d /tmp/mixtral-repack-cli.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# Not a terminal: one plain line per file, no carriage returns or escape codes.
"$bin" repack --model "$model" --out "$tmp/plain" --dtype q8 >"$tmp/out" 2>"$tmp/err" </dev/null ||
  fail "plain repack: exit $?"
grep -q '^expert-007.bin: ' "$tmp/err" || fail "plain repack: no per-file line"
if grep -q $'\r\|\033' "$tmp/err"; then fail "plain repack: terminal codes in a pipe"; fi
grep -q "^wrote $tmp/plain: 9 weight files" "$tmp/out" || fail "plain repack: no summary ($(cat "$tmp/out"))"

# A terminal: the bar is redrawn in place and ends at 100% of the bytes written.
if command -v script >/dev/null; then
  script -qfec "'$bin' repack --model '$model' --out '$tmp/tty' --dtype q4" /dev/null >"$tmp/tty.log" 2>&1 </dev/null ||
    fail "tty repack: exit $?"
  grep -q $'\r\033\\[K\\[#\\{30\\}\\] [0-9.]* / [0-9.]* MB 100%' "$tmp/tty.log" || fail "tty repack: no finished bar ($(tr '\r\033' '|^' <"$tmp/tty.log" | head -c 600))"
  grep -q 'expert-003.bin: ' "$tmp/tty.log" || fail "tty repack: per-file lines missing"
  # The bar's total is the bytes of tensor data: the written cache holds at least that much.
  total_mb=$(tr '\r' '\n' <"$tmp/tty.log" | grep -o '/ [0-9.]* MB 100%' | tail -1 | awk '{print $2}')
  written_mb=$(grep -o 'wrote .*, \([0-9.]*\) MB' "$tmp/tty.log" | awk '{print $(NF-1)}')
  awk -v t="$total_mb" -v w="$written_mb" 'BEGIN { exit !(t > 0 && t <= w) }' ||
    fail "tty repack: bar total $total_mb MB vs written $written_mb MB"
else
  echo "note: script(1) not found; terminal bar not checked"
fi

# The same source and dtype again is a cache hit that writes nothing.
"$bin" repack --model "$model" --out "$tmp/plain" --dtype q8 >"$tmp/out" 2>"$tmp/err" </dev/null || fail "second repack: exit $?"
grep -q "^cache hit: $tmp/plain is up to date" "$tmp/out" || fail "second repack: not a cache hit ($(cat "$tmp/out"))"

if [ "$failures" -gt 0 ]; then
  echo "$failures failure(s)"
  exit 1
fi
echo "repack_cli_test: all passed"
