#!/usr/bin/env bash
# `make demo`: scripts/demo.sh <mixtral-binary> [model]
# Without a model, the tiny random test model (real tokenizer, random weights, so the text is
# noise) runs the general prompts: it shows the live view and the summary anywhere in seconds.
# With a model (MIXTRAL_MODEL=/path make demo) it runs that model with --instruct and the
# instruct prompts. Extra options go through DEMO_ARGS, e.g. DEMO_ARGS="--long-context".
set -euo pipefail
bin=${1:?usage: scripts/demo.sh <mixtral-binary> [model]}
model=${2:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -x "$bin" ] || { echo "demo: $bin is not built (run make build)" >&2; exit 1; }
read -r -a extra <<<"${DEMO_ARGS:-}"
if [ -z "$model" ]; then
  model=$root/tests/data/tiny-mixtral/hf
  echo "demo: tiny random model ($model); set MIXTRAL_MODEL to run a real checkpoint" >&2
  exec "$bin" demo --model "$model" --prompts "$root/demo/prompts-general.json" "${extra[@]}"
fi
[ -e "$model" ] || { echo "demo: MIXTRAL_MODEL=$model does not exist" >&2; exit 1; }
echo "demo: $model with --instruct and the instruct prompts" >&2
exec "$bin" demo --model "$model" --instruct --prompts "$root/demo/prompts-instruct.json" "${extra[@]}"
