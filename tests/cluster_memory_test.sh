#!/usr/bin/env bash
# Memory per host, proven: 4 namespace hosts (tests/cluster/cluster.sh), each under a cgroup v1
# memory cap that lies between one host's share (shared weights + 2 of 8 experts) and the whole
# model. Each host holds only its repack bundle, copied in from inside its own cgroup so the
# page cache its rank maps is charged to it. The run must pass, give the same bytes as one
# process and never reach the cap (memory.failcnt stays 0); one process under the same cap
# must reach it.
# Without root, `ip netns` or a writable cgroup v1 memory controller: SKIP, exit 77.
# Usage (ctest): bash tests/cluster_memory_test.sh <mixtral-binary> <source-dir>
set -u -o pipefail

BIN=$(readlink -f "${1:?usage: cluster_memory_test.sh <mixtral-binary> <source-dir>}")
SRC=$(readlink -f "${2:?usage: cluster_memory_test.sh <mixtral-binary> <source-dir>}")
# shellcheck source=cluster/cluster.sh
source "$SRC/tests/cluster/cluster.sh"
CL_TIMEOUT=120
N=4

command -v mpirun >/dev/null || { echo "FAIL: mpirun not found (apt-get install openmpi-bin)"; exit 1; }
W=$(mktemp -d /tmp/mixtral-cluster-mem.XXXXXX)
trap 'cluster_down; rm -rf "$W"' EXIT
FAILS=0
pass() { echo "ok:   $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
mb() { echo $(($1 / 1048576)); }

# Experts dominate, as in Mixtral (there ~96% of the weights): dim 256, ffn 14336, 3 layers
# (0.53 GB of experts), large enough that the runtime overhead of a rank (MPI daemon and
# buffers, libraries, KV cache; ~90 MB) does not blur the comparison.
"$BIN" make-tiny --out "$W/src" --dim 256 --ffn 14336 --layers 3 --heads 4 --kv-heads 2 --threads 2 \
  >/dev/null 2>"$W/err" || { fail "make-tiny: $(cat "$W/err")"; exit 1; }
"$BIN" repack --model "$W/src" --out "$W/cache" --dtype bf16 --ranks $N >/dev/null 2>"$W/err" ||
  { fail "repack --ranks $N: $(cat "$W/err")"; exit 1; }
read -r SHARED EXPERTS < <(python3 -c '
import json, os, sys
d = sys.argv[1]; m = json.load(open(d + "/manifest.json"))
size = lambda f: os.path.getsize(os.path.join(d, f["name"]))
print(sum(size(f) for f in m["files"] if f["kind"] != "expert"), sum(size(f) for f in m["files"] if f["kind"] == "expert"))
' "$W/cache")
# Halfway between one host's share and the whole model.
CAP_MB=${MIXTRAL_TEST_CAP_MB:-$(((SHARED + EXPERTS / N + SHARED + EXPERTS) / 2 / 1048576))}
echo "weights: shared $(mb $SHARED) MB, experts $(mb $EXPERTS) MB (whole model $(mb $((SHARED + EXPERTS))) MB);" \
  "a host's share $(mb $((SHARED + EXPERTS / N))) MB; cap per host $CAP_MB MB"

# generate rather than score: score keeps the logits of every position of every case on rank 0
# (vocab × positions × 4 bytes, ~150 MB here), which would measure the command, not the host.
GEN=(generate --prompt "The quick brown fox jumps over the lazy dog" -n 24 --temperature 0 --threads 1)
"$BIN" "${GEN[@]}" --model "$W/cache" >"$W/score.ref" 2>"$W/err" ||
  { fail "generate, one process: $(cat "$W/err")"; exit 1; }

# Page cache is charged to the cgroup that first reads a page: read the binary and start
# mpirun's daemon libraries once outside the caps, so no host is charged for shared files.
cat "$BIN" >/dev/null
OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 mpirun -np 1 --mca btl tcp,self "$BIN" --version >/dev/null 2>&1

cluster_up $N --mem-mb "$CAP_MB"
rc=$?
if [[ $rc != 0 ]]; then
  [[ $rc == 77 ]] && { echo "SKIP: SKIPPED: no namespaces or no cgroup v1 memory controller; no memory check ran"; exit 77; }
  fail "could not make $N capped hosts"; exit 1
fi
# Each host gets manifest.json plus its own files, copied by a process inside its cgroup.
for ((i = 0; i < N; i++)); do
  files=$(python3 -c 'import json,sys; print(" ".join(json.load(open(sys.argv[1]))["ranks"]["files"][int(sys.argv[2])]))' "$W/cache/manifest.json" $i)
  mkdir -p "$W/host$i"
  (cd "$W/cache" && cluster_exec $i cp manifest.json $files "$W/host$i/") || fail "copy to host $i"
  echo 0 >"$CL_CG/h$i/memory.max_usage_in_bytes"
done
cluster_mpirun -np $N -x MIXTRAL_EP_STATS=1 "$BIN" "${GEN[@]}" --model "$W/host{rank}" >"$W/score.cl" 2>"$W/err"
rc=$?
[[ $rc == 0 ]] && pass "generate on $N hosts, each capped at $CAP_MB MB" || fail "capped run exited $rc: $(tail -5 "$W/err")"
grep -A$N '^rank  experts' "$W/err" | sed 's/^/      /'
cmp -s "$W/score.ref" "$W/score.cl" && pass "same bytes as one process" || fail "capped run's output differs"
for ((i = 0; i < N; i++)); do
  peak=$(mb "$(cat "$CL_CG/h$i/memory.max_usage_in_bytes")")
  hits=$(cat "$CL_CG/h$i/memory.failcnt")
  [[ -n ${MIXTRAL_TEST_SHOW_STAT:-} ]] && grep -E "^(total_)?(rss|cache|mapped_file|shmem) " "$CL_CG/h$i/memory.stat"
  echo "      host h$i: peak $peak MB of $CAP_MB MB (cgroup memory.max_usage_in_bytes), cap reached $hits times"
  [[ $hits == 0 ]] && pass "host h$i stayed under its cap" || fail "host h$i reached its cap $hits times"
done
cluster_down

# One process under the same cap (a cgroup of its own, its whole cache copied in from inside).
CG=/sys/fs/cgroup/memory/${CL_TAG}one
mkdir "$CG" && echo $((CAP_MB * 1048576)) >"$CG/memory.limit_in_bytes" || { fail "cannot make cgroup $CG"; exit 1; }
trap 'cluster_down; rmdir "$CG" 2>/dev/null; rm -rf "$W"' EXIT
sh -c 'echo $$ >"$1/cgroup.procs" && cp -r "$2" "$3"' _ "$CG" "$W/cache" "$W/one"
echo 0 >"$CG/memory.failcnt"
echo 0 >"$CG/memory.max_usage_in_bytes"
sh -c 'echo $$ >"$1/cgroup.procs" && shift && exec "$@"' _ "$CG" \
  "$BIN" "${GEN[@]}" --model "$W/one" >/dev/null 2>"$W/err"
hits=$(cat "$CG/memory.failcnt")
echo "      one process under the same cap: peak $(mb "$(cat "$CG/memory.max_usage_in_bytes")") MB, cap reached $hits times"
[[ $hits -gt 0 ]] && pass "one process does not fit under the $CAP_MB MB cap (reached it $hits times)" ||
  fail "one process stayed under the cap: the cap proves nothing"

if [[ $FAILS != 0 ]]; then echo "$FAILS check(s) failed"; exit 1; fi
echo "all memory checks passed"
