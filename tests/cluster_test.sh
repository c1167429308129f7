#!/usr/bin/env bash
# Expert parallelism across "hosts" that are network namespaces (tests/cluster/cluster.sh):
# each rank has its own network stack, hostname and address, and ranks talk over TCP only
# (btl tcp,self). Output must equal one process byte for byte, for 2, 3, 4, 6 and 10 hosts (10: split experts, also from per-host bundles), with
# a placement file, and over shaped links; a host that dies or drops its link ends the job
# within seconds, naming it; `serve` first answers its requests with a 503 naming it.
# Without root or `ip netns` it prints SKIP and exits 77 (registered as ctest's skip code).
# Usage (ctest): bash tests/cluster_test.sh <mixtral-binary> <source-dir>
set -u -o pipefail

BIN=$(readlink -f "${1:?usage: cluster_test.sh <mixtral-binary> <source-dir>}")
SRC=$(readlink -f "${2:?usage: cluster_test.sh <mixtral-binary> <source-dir>}")
MODEL=$SRC/tests/data/tiny-mixtral/hf
CASES=$SRC/tests/data/tiny-mixtral/expected.json
# shellcheck source=cluster/cluster.sh
source "$SRC/tests/cluster/cluster.sh"
CL_TIMEOUT=90

command -v mpirun >/dev/null || { echo "FAIL: mpirun not found (apt-get install openmpi-bin)"; exit 1; }
cluster_up 2
rc=$?
if [[ $rc != 0 ]]; then
  if [[ $rc == 77 ]]; then
    echo "SKIP: SKIPPED: cannot create network namespaces here (needs root and iproute2); no multi-host check ran"
    exit 77
  fi
  echo "FAIL: could not build the namespace cluster"; exit 1
fi
cluster_down

W=$(mktemp -d /tmp/mixtral-cluster-test.XXXXXX)
trap 'cluster_down; rm -rf "$W"' EXIT
FAILS=0
pass() { echo "ok:   $*"; }
fail() { echo "FAIL: $*"; FAILS=$((FAILS + 1)); }
same() {
  if [[ -s $2 ]] && cmp -s "$2" "$3"; then pass "$1"; else
    fail "$1: $3 differs from $2"; diff <(head -c 2000 "$2") <(head -c 2000 "$3") | head -20; fi
}
run() {  # run <out> <err> cmd...: exit code in $RC, wall seconds in $SECS
  local out=$1 err=$2; shift 2
  local t0=$SECONDS
  "$@" >"$out" 2>"$err"
  RC=$?
  SECS=$((SECONDS - t0))
}
exited_ok() { [[ $RC == 0 ]] || fail "$1 exited $RC: $(tail -5 "$2")"; }

cat >"$W/prompts.json" <<'EOF'
["Hi",
 "The quick brown fox jumps over the lazy dog and then keeps running far into the forest",
 "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
 "Translate English to French: cheese =>"]
EOF

# ---- reference: one process ------------------------------------------------------------------
run "$W/score.ref" "$W/err" "$BIN" score --model "$MODEL" --cases "$CASES"
[[ $RC == 0 ]] || { fail "score, one process, exited $RC: $(cat "$W/err")"; exit 1; }
run "$W/gen.ref" "$W/err" "$BIN" generate --model "$MODEL" -n 16 --temperature 0
exited_ok "generate, one process" "$W/err"
run "$W/batch.ref" "$W/err" "$BIN" generate --model "$MODEL" --prompts-file "$W/prompts.json" -n 12 --temperature 0.9 --seed 5 --json
exited_ok "sampled batch, one process" "$W/err"

# serve_session <out> <host index or "local"> [launcher...]: a few requests; the answers.
serve_session() {
  local out=$1 where=$2; shift 2
  local ex=()
  [[ $where != local ]] && ex=(cluster_exec "$where")
  rm -f "$W/serve.out"
  "$@" "$BIN" serve --model "$MODEL" --port 0 --max-users 2 --threads 1 >"$W/serve.out" 2>"$W/serve.err" &
  local job=$! port= i
  for i in $(seq 300); do
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$W/serve.out" | head -1)
    [[ -n $port ]] && break
    sleep 0.1
  done
  : >"$out"
  if [[ -n $port ]]; then
    for body in \
      '{"messages":[{"role":"user","content":"Hello there"}],"max_tokens":8,"temperature":0}' \
      '{"messages":[{"role":"user","content":"Tell me a joke"}],"max_tokens":8,"temperature":0.9,"seed":3,"n":2}'; do
      "${ex[@]}" curl -s --max-time 30 "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' -d "$body" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps([d.get("choices"), d.get("usage"), d.get("error")]))' >>"$out"
    done
  fi
  # serve runs on host 0 as mpirun's child: signal it there, then wait for mpirun to finish.
  if [[ $where == local ]]; then kill -TERM $job 2>/dev/null; else
    pkill_serve_in_host0
  fi
  wait $job
}
# SIGTERM to the serve process of this cluster's host 0 only (found by namespace, not by name).
pkill_serve_in_host0() {
  local pid
  for pid in $(cluster_pids 0); do
    [[ $(readlink -f /proc/$pid/exe 2>/dev/null) == "$BIN" ]] && kill -TERM "$pid" 2>/dev/null
  done
}
serve_session "$W/serve.ref" local
grep -q '"content"' "$W/serve.ref" || fail "serve, one process, answered nothing: $(cat "$W/serve.ref" "$W/serve.err")"

# ---- 2, 3, 4, 6 and 10 hosts (10: experts 0 and 1 split over two hosts each) ------------------
for n in 2 3 4 6 10; do
  if ! cluster_up $n; then fail "could not make $n namespace hosts"; continue; fi
  run "$W/score.$n" "$W/err.$n" cluster_mpirun -np $n "$BIN" score --model "$MODEL" --cases "$CASES"
  exited_ok "score on $n hosts" "$W/err.$n"
  same "score --cases, $n hosts over TCP" "$W/score.ref" "$W/score.$n"
  # Each rank really ran on its own host: the placement line names h0..h{n-1}.
  want=$(for ((i = 0; i < n; i++)); do printf 'rank %d (h%d)' $i $i; done)
  got=$(grep '^placement:' "$W/err.$n" | grep -o 'rank [0-9]* (h[0-9]*)' | tr -d '\n')
  [[ $got == "$want" ]] && pass "$n hosts: placement names every rank's own host" ||
    fail "$n hosts: placement line '$(grep '^placement:' "$W/err.$n")'"
  if [[ $n == 3 ]]; then
    grep -q 'rank 0 (h0): experts 0-2; rank 1 (h1): experts 3-5; rank 2 (h2): experts 6-7' "$W/err.$n" &&
      pass "3 hosts: experts 3+3+2" || fail "3 hosts: placement $(grep '^placement:' "$W/err.$n")"
  fi
  if [[ $n == 2 || $n == 4 ]]; then
    run "$W/gen.$n" "$W/err" cluster_mpirun -np $n "$BIN" generate --model "$MODEL" -n 16 --temperature 0
    exited_ok "generate on $n hosts" "$W/err"
    same "greedy generate, $n hosts" "$W/gen.ref" "$W/gen.$n"
  fi
  if [[ $n != 6 ]]; then
    run "$W/batch.$n" "$W/err" cluster_mpirun -np $n "$BIN" generate --model "$MODEL" --prompts-file "$W/prompts.json" -n 12 --temperature 0.9 --seed 5 --json
    exited_ok "sampled batch on $n hosts" "$W/err"
    same "sampled batch, $n hosts" "$W/batch.ref" "$W/batch.$n"
  fi
  if [[ $n == 2 || $n == 4 ]]; then
    serve_session "$W/serve.$n" 0 cluster_mpirun -np $n
    same "serve on $n hosts" "$W/serve.ref" "$W/serve.$n"
  fi
  if [[ $n == 2 ]]; then
    # Per-host bundles (repack --ranks 2): a host missing one of its files, and a host whose files
    # come from another model, are named at start.
    "$BIN" repack --model "$MODEL" --out "$W/cache" --ranks 2 >/dev/null 2>&1
    "$BIN" make-tiny --out "$W/other" --seed 2 >/dev/null 2>&1
    "$BIN" repack --model "$W/other" --out "$W/cache2" --ranks 2 >/dev/null 2>&1
    for r in 0 1; do
      for c in cache cache2; do
        mkdir -p "$W/$c.host$r"
        files=$(python3 -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['ranks']['files'][$r]))" "$W/$c/manifest.json")
        (cd "$W/$c" && cp manifest.json $files "$W/$c.host$r/")
      done
    done
    run "$W/score.bundle" "$W/err" cluster_mpirun -np 2 "$BIN" score --model "$W/cache.host{rank}" --cases "$CASES"
    exited_ok "score from per-host bundles" "$W/err"
    same "score, 2 hosts each holding only its bundle" "$W/score.ref" "$W/score.bundle"
    run "$W/out" "$W/err" cluster_mpirun -np 2 -x MIXTRAL_MODEL_RANK1="$W/cache2.host1" "$BIN" score --model "$W/cache.host0" --cases "$CASES"
    [[ $RC != 0 && $RC != 124 ]] && grep -q "rank 1 (host h1): its model .*cache2.host1 differs from rank 0's" "$W/err" &&
      pass "a host with another model's files is named at start" || fail "other model on h1: exit $RC, $(head -3 "$W/err")"
    rm "$W/cache.host1/expert-005.bin"
    run "$W/out" "$W/err" cluster_mpirun -np 2 "$BIN" score --model "$W/cache.host{rank}" --cases "$CASES"
    [[ $RC != 0 && $RC != 124 ]] && grep -q "rank 1 (host h1): .*expert-005.bin: missing" "$W/err" &&
      pass "a host missing an expert file is named at start (${SECS}s)" || fail "missing file on h1: exit $RC, $(head -3 "$W/err")"
  fi
  if [[ $n == 10 ]]; then
    grep -q 'rank 0 (h0): expert 0 rows 0-63; .*rank 8 (h8): expert 0 rows 64-127; rank 9 (h9): expert 1 rows 64-127' "$W/err.$n" &&
      pass "10 hosts: experts 0 and 1 split" || fail "10 hosts: placement $(grep '^placement:' "$W/err.$n")"
    # Per-host bundles of a `repack --ranks 10` cache: host 8 holds shared.bin and expert 0's file.
    "$BIN" repack --model "$MODEL" --out "$W/c10" --ranks 10 >/dev/null 2>&1
    for ((r = 0; r < n; r++)); do
      mkdir -p "$W/c10.host$r"
      files=$(python3 -c "import json,sys; print(' '.join(json.load(open(sys.argv[1]))['ranks']['files'][$r]))" "$W/c10/manifest.json")
      (cd "$W/c10" && cp manifest.json $files "$W/c10.host$r/")
    done
    [[ $(ls "$W/c10.host8" | grep -c '^expert-') == 1 && -e $W/c10.host8/expert-000.bin ]] ||
      fail "10 hosts: host 8's bundle is $(ls "$W/c10.host8" | tr '\n' ' ')"
    run "$W/score.b10" "$W/err" cluster_mpirun -np $n "$BIN" score --model "$W/c10.host{rank}" --cases "$CASES"
    exited_ok "score on 10 hosts from per-host bundles" "$W/err"
    same "score, 10 hosts each holding only its bundle (split experts)" "$W/score.ref" "$W/score.b10"
  fi
  if [[ $n == 3 ]]; then
    # A placement file: uneven, not contiguous, one host holding most experts.
    printf '# by memory\nrank 0: 6\nrank 1: 0-4 7\nrank 2: 5\n' >"$W/place"
    run "$W/score.place" "$W/err" cluster_mpirun -np 3 "$BIN" score --model "$MODEL" --cases "$CASES" --placement "$W/place"
    exited_ok "score with a placement file" "$W/err"
    same "score, 3 hosts, placement file" "$W/score.ref" "$W/score.place"
    grep -q 'rank 0 (h0): experts 6; rank 1 (h1): experts 0-4 7; rank 2 (h2): experts 5' "$W/err" &&
      pass "placement file printed at start" || fail "placement line: $(grep '^placement' "$W/err")"
  fi
  cluster_down
done

# ---- shaped links ------------------------------------------------------------------------------
# 1 Gbit/s (token bucket); with sch_netem in the kernel also 200 µs each way.
shape=(--rate 1gbit)
if cluster_has_netem; then shape+=(--delay 200us); else
  echo "NOTE: this kernel has no sch_netem: links are rate-limited (tbf) but not delayed"; fi
if cluster_up 2 "${shape[@]}"; then
  run "$W/score.slow" "$W/err" cluster_mpirun -np 2 -x MIXTRAL_EP_STATS=1 "$BIN" score --model "$MODEL" --cases "$CASES"
  exited_ok "score over shaped links (${shape[*]})" "$W/err"
  same "score, 2 hosts over shaped links (${shape[*]})" "$W/score.ref" "$W/score.slow"
  grep -A3 '^rank  experts' "$W/err" | sed 's/^/      /'
  cluster_down
else
  fail "could not make shaped hosts (${shape[*]})"
fi

# ---- faults: a host's rank killed, a host's link dropped ---------------------------------------
if cluster_up 3; then
  run "$W/out" "$W/err" cluster_mpirun -np 3 -x MIXTRAL_TEST_RANK=2 -x MIXTRAL_TEST_DIE_AT_STEP=2 \
    "$BIN" generate --model "$MODEL" -n 16 --temperature 0
  if [[ $RC != 0 && $RC != 124 && $SECS -le 15 ]] && grep -qi "rank 2" "$W/err" && grep -qiE "signal 9|killed" "$W/err"; then
    pass "rank 2 (host h2) killed mid-run: job ended with exit $RC in ${SECS}s, rank named"
  else
    fail "rank 2 killed mid-run: exit $RC (124 = hung) after ${SECS}s, stderr: $(head -8 "$W/err")"
  fi
  # Link down while chat waits for input; the next step cannot get host 2's expert rows.
  mkfifo "$W/stdin"
  exec 3<>"$W/stdin"
  t0=$SECONDS
  (cluster_mpirun -np 3 "$BIN" chat --model "$MODEL" -n 200 <"$W/stdin" >"$W/out" 2>"$W/err"
   echo $? >"$W/chat.rc") &
  job=$!
  for _ in $(seq 300); do grep -q '^placement' "$W/err" 2>/dev/null && break; sleep 0.1; done
  ip -n "${CL_NETNS[2]}" link set eth0 down
  t1=$SECONDS
  echo "tell me a long story" >&3
  wait $job
  RC=$(cat "$W/chat.rc" 2>/dev/null || echo missing)
  if [[ $RC != 0 && $RC != 124 && $RC != missing && $((SECONDS - t1)) -le 10 ]] &&
     grep -q "no expert rows from rank 2 on host h2" "$W/err"; then
    pass "host h2's link dropped: job ended with exit $RC in $((SECONDS - t1))s, naming rank 2 and host h2"
    # h2 cannot be told to stop; its own rank times out the same way and its daemon gives up.
    for _ in $(seq 100); do [[ -z $(cluster_pids 2) ]] && break; sleep 0.1; done
    left=$(cluster_pids 2 | wc -l)
    [[ $left == 0 ]] && pass "nothing left running on the cut-off host h2 $((SECONDS - t1))s after the cut" ||
      fail "$left processes still run on host h2 $((SECONDS - t1))s after its link went down"
  else
    fail "link dropped: exit $RC (124 = hung) after $((SECONDS - t1))s, stderr: $(head -8 "$W/err")"
  fi
  exec 3>&-
  cluster_down
else
  fail "could not make 3 hosts for the fault checks"
fi

# ---- serve loses a host's link: its requests get a 503 naming the host, serve exits non-zero ------
if cluster_up 2; then
  rm -f "$W/serve.out" "$W/serve.rc"
  (cluster_mpirun -np 2 "$BIN" serve --model "$MODEL" --port 0 --threads 1 >"$W/serve.out" 2>"$W/serve.err"
   echo $? >"$W/serve.rc") &
  job=$!
  port=
  for _ in $(seq 300); do
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$W/serve.out" | head -1)
    [[ -n $port ]] && break
    sleep 0.1
  done
  if [[ -n $port ]]; then
    cluster_exec 0 curl -s -N --max-time 30 "http://127.0.0.1:$port/v1/completions" -H 'Content-Type: application/json' \
      -d '{"prompt":"Once upon a time","max_tokens":4000,"stream":true}' -o "$W/req.stream" &
    c1=$!
    sleep 0.3
    cluster_exec 0 curl -s --max-time 30 "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
      -d '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":4000}' -o "$W/req.plain" -w '%{http_code}' >"$W/req.plain.code" &
    c2=$!
    sleep 0.3
    ip -n "${CL_NETNS[1]}" link set eth0 down
    t1=$SECONDS
    wait $c1 $c2
  fi
  wait $job
  RC=$(cat "$W/serve.rc" 2>/dev/null || echo missing)
  want="rank 1 on host h1"
  if [[ -n $port && $RC != 0 && $RC != 124 && $RC != missing && $((SECONDS - t1)) -le 10 &&
        $(cat "$W/req.plain.code") == 503 ]] && grep -q "\"message\":\"[^\"]*$want" "$W/req.plain" &&
     tail -3 "$W/req.stream" | grep -q "^data: {\"error\":{.*$want"; then
    pass "serve, host h1's link dropped: stream ended with an error event and a request got 503, both naming $want; exit $RC in $((SECONDS - t1))s"
  else
    fail "serve, link dropped: exit $RC after $((SECONDS - ${t1:-$SECONDS}))s; plain $(cat "$W/req.plain.code" 2>/dev/null): $(head -c 300 "$W/req.plain" 2>/dev/null); stream tail: $(tail -c 300 "$W/req.stream" 2>/dev/null); stderr: $(grep -v '^ ' "$W/serve.err" | head -8)"
  fi
  cluster_down
else
  fail "could not make 2 hosts for the serve fault check"
fi

if [[ $FAILS != 0 ]]; then echo "$FAILS check(s) failed"; exit 1; fi
echo "all cluster checks passed"
