#!/usr/bin/env bash
# Prints the table of docs/accuracy.md: each layout and cache dtype scored against the
# independent PyTorch reference (tests/data/tiny-mixtral/expected.json) with `score --compare`.
# Usage: scripts/accuracy.sh [build/bin/mixtral]
set -euo pipefail
BIN=${1:-build/bin/mixtral}
D=$(cd "$(dirname "$0")/.." && pwd)/tests/data/tiny-mixtral
REF=$D/expected.json
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
row() {  # name, model path, extra flags
  "$BIN" score --model "$2" --cases "$REF" --compare ${3:-} | python3 -c '
import json, sys
a = json.load(sys.stdin)
print("| %s | %.1f%% | %.3g | %.3g | %.2e | %.2e |" % (sys.argv[1], 100 * a["top1_agreement"],
      a["mean_abs_dlogprob"], a["max_abs_dlogprob"], a["max_abs_dlse"], a["max_abs_dlogit"]))' "$1"
}
echo "| model | top-1 agreement | mean abs dlogp | max abs dlogp | max abs dlse | max abs dlogit |"
echo "|---|---|---|---|---|---|"
for l in hf mistral pth pth-zip64 pt-stacked; do row "$l (bf16)" "$D/$l"; done
row "hf, --kv-dtype f16" "$D/hf" "--kv-dtype f16"
row "hf, --kv-dtype bf16" "$D/hf" "--kv-dtype bf16"
for q in f16 q8_0 q4_0 q4_k_m; do row "gguf $q" "$D/gguf/tiny-mixtral-$q.gguf"; done
for d in f32 bf16 q8 q4; do
  "$BIN" repack --model "$D/hf" --out "$T/$d" --dtype "$d" >/dev/null 2>&1
  row "cache --dtype $d (from hf)" "$T/$d"
done
for q in q8_0 q4_0 q4_k_m; do
  "$BIN" repack --model "$D/gguf/tiny-mixtral-$q.gguf" --out "$T/g-$q" --dtype f32 >/dev/null 2>&1
  row "gguf $q dequantized to f32 (exact arithmetic)" "$T/g-$q"
done
for s in avx2 scalar; do
  for q in q8_0 q4_0; do
    MIXTRAL_SIMD=$s row "gguf $q, MIXTRAL_SIMD=$s" "$D/gguf/tiny-mixtral-$q.gguf"
  done
done
