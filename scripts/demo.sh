#!/usr/bin/env bash
# `make demo`: scripts/demo.sh <mixtral-binary> [model]
# Without a model, models/tale-mixtral (a small Mixtral trained here on A Tale of Two Cities,
# tools/train/) continues Dickens-style prompts: English-looking text in seconds on any CPU.
# If it is missing, the tiny random test model (random weights, so the text is noise) runs.
# With a model (MIXTRAL_MODEL=/path make demo) it runs that model with --instruct and the
# instruct prompts. Extra options go through DEMO_ARGS, e.g. DEMO_ARGS="--long-context".
set -euo pipefail
bin=${1:?usage: scripts/demo.sh <mixtral-binary> [model]}
model=${2:-}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ -x "$bin" ] || { echo "demo: $bin is not built (run make build)" >&2; exit 1; }
read -r -a extra <<<"${DEMO_ARGS:-}"
if [ -z "$model" ] && [ -f "$root/models/tale-mixtral/config.json" ]; then
  model=$root/models/tale-mixtral
  echo "demo: $model (trained on A Tale of Two Cities); set MIXTRAL_MODEL to run a real checkpoint" >&2
  exec "$bin" demo --model "$model" --prompts "$root/demo/prompts-tale.json" --context 512 --temperature 0.7 "${extra[@]}"
fi
if [ -z "$model" ]; then
  model=$root/tests/data/tiny-mixtral/hf
  echo "demo: tiny random model ($model); set MIXTRAL_MODEL to run a real checkpoint" >&2
  exec "$bin" demo --model "$model" --prompts "$root/demo/prompts-general.json" "${extra[@]}"
fi
[ -e "$model" ] || { echo "demo: MIXTRAL_MODEL=$model does not exist" >&2; exit 1; }
echo "demo: $model with --instruct and the instruct prompts" >&2
exec "$bin" demo --model "$model" --instruct --prompts "$root/demo/prompts-instruct.json" "${extra[@]}"
