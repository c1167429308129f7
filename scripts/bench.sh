#!/usr/bin/env bash
# The benchmark workload of docs/benchmarks.md: the real Mixtral width with 2 layers, from
# make-tiny, repacked to q8 and q4, then `mixtral bench` on each (and under mpirun -np 2).
# Usage: scripts/bench.sh [build/bin/mixtral] [workdir]   (needs ~16 GB of disk in workdir)
set -euo pipefail
BIN=${1:-build/bin/mixtral}
W=${2:-/tmp/mixtral-bench}
THREADS=${THREADS:-2}
mkdir -p "$W"
[ -f "$W/mx2/config.json" ] || "$BIN" make-tiny --out "$W/mx2" --preset mixtral-8x7b --layers 2
for d in q8 q4; do "$BIN" repack --model "$W/mx2" --out "$W/mx2-$d" --dtype "$d"; done
for d in q8 q4; do
  echo "== $d cache, $THREADS threads"
  "$BIN" bench --model "$W/mx2-$d" --threads "$THREADS" --prompt 512 --gen 128 --batch 1,8,32 | tee "$W/bench-$d.txt"
done
echo "== bf16 source (HF layout), $THREADS threads"
"$BIN" bench --model "$W/mx2" --threads "$THREADS" --prompt 512 --gen 32 --batch 1,32 | tee "$W/bench-bf16.txt"
if command -v mpirun >/dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  for np in 1 2; do
    echo "== q8 cache, mpirun -np $np (the same $THREADS cores)"
    mpirun --oversubscribe -np "$np" "$BIN" bench --model "$W/mx2-q8" --prompt 512 --gen 64 --batch 1,32 | tee "$W/bench-q8-np$np.txt"
  done
fi
