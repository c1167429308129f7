#!/usr/bin/env bash
# Our k-quant caches against llama.cpp's Q4_K_M / Q5_K_M / Q6_K of the same weights, on a random
# Mixtral wide enough for k-quants (dim 256; the fixture's dim 64 is not a multiple of 256).
# The reference is the unquantized (bf16 -> f32) model's own logits, scored by `mixtral score`;
# every row runs in our engine, so only the quantization differs. Prints docs/accuracy.md's table.
# Usage: scripts/kquant_accuracy.sh [build/bin/mixtral] [llama.cpp checkout with build/bin]
set -euo pipefail
BIN=$(realpath "${1:-build/bin/mixtral}")
LLAMA=${2:-/tmp/anchors/llama.cpp}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$BIN" make-tiny --out "$T/hf" --dim 256 --ffn 512 --layers 4 --heads 4 --kv-heads 2 --seed 7 >/dev/null
# Cases: the fixture's 6 prompts plus the README's first 1500 bytes as one passage.
"$BIN" score --model "$T/hf" --cases "$ROOT/tests/data/tiny-mixtral/expected.json" > "$T/a.json"
"$BIN" score --model "$T/hf" --text "$(head -c 1500 "$ROOT/README.md")" > "$T/b.json"
python3 -c '
import json, sys
cases = json.load(open(sys.argv[1])) + [json.load(open(sys.argv[2]))]
json.dump({"cases": [{"tokens": c["tokens"], "positions": c["positions"]} for c in cases]}, open(sys.argv[3], "w"))
' "$T/a.json" "$T/b.json" "$T/ref.json"
row() {  # name, model path
  "$BIN" score --model "$2" --cases "$T/ref.json" --compare | python3 -c '
import json, sys
a = json.load(sys.stdin)
print("| %s | %d | %.1f%% | %.4f | %.3g | %.3g |" % (sys.argv[1], a["positions"], 100 * a["top1_agreement"],
      a["mean_abs_dlogprob"], a["max_abs_dlogprob"], a["max_abs_dlse"]))' "$1"
}
size() { du -sb --apparent-size "$1" | cut -f1; }
echo "| model | positions | top-1 agreement | mean abs dlogp | max abs dlogp | max abs dlse |"
echo "|---|---|---|---|---|---|"
for d in q8 q4 q4k q5k q6k; do
  "$BIN" repack --model "$T/hf" --out "$T/c-$d" --dtype "$d" >/dev/null 2>&1
  row "cache --dtype $d ($(( $(size "$T/c-$d") / 1000000 )) MB)" "$T/c-$d"
done
if [ -x "$LLAMA/build/bin/llama-quantize" ]; then
  PYTHONPATH=/work/shared/anchors/pyshim:$LLAMA/gguf-py /usr/bin/python3 "$LLAMA/convert_hf_to_gguf.py" \
    "$T/hf" --outtype f32 --outfile "$T/f32.gguf" >/dev/null 2>&1
  for q in Q4_K_M Q5_K_M Q6_K; do
    "$LLAMA/build/bin/llama-quantize" "$T/f32.gguf" "$T/$q.gguf" "$q" >/dev/null 2>&1
    row "llama-quantize $q ($(( $(size "$T/$q.gguf") / 1000000 )) MB)" "$T/$q.gguf"
  done
  "$BIN" repack --model "$T/Q4_K_M.gguf" --out "$T/g-f32" --dtype f32 >/dev/null 2>&1
  row "llama-quantize Q4_K_M dequantized to f32" "$T/g-f32"
fi
"$BIN" repack --model "$T/c-q4k" --out "$T/o-f32" --dtype f32 >/dev/null 2>&1
row "cache --dtype q4k dequantized to f32" "$T/o-f32"
