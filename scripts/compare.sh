#!/usr/bin/env bash
# Side by side with the anchor engines (issue 10): `mixtral bench` against ik_llama.cpp's
# llama-bench / llama-batched-bench (and llama.cpp's llama-bench when built) on the same GGUF
# files, threads and lengths, engines alternating over --rounds; every figure is the best
# sample seen, ik_llama.cpp's the best over -rtr 0 and -rtr 1. Prints one table of ratios per
# file and keeps every raw output and sample under --out. docs/benchmarks.md, "Side by side".
set -uo pipefail

usage() {
  cat <<'EOF'
usage: scripts/compare.sh [options] FILE.gguf...
  --ik DIR          ik_llama.cpp's build/bin (default /tmp/anchors/ik_llama.cpp/build/bin)
  --llama DIR       llama.cpp's build/bin, optional (default /tmp/anchors/llama.cpp/build/bin)
  --bin PATH        our binary (default build/bin/mixtral)
  --rounds N        rounds of all engines, alternating which goes first (default 2, at least 2)
  --threads N       threads for every engine (default 2)
  --reps N          samples of each short figure per engine and round (default 3)
  --gen N           decode steps per sample (default 64)
  --depth N         also compare at a context of N tokens (repeatable): prefill of N tokens
                    and decode at batch 1 after N; one sample per engine and round
  --out DIR         raw outputs, samples.csv, samples.json, table.txt (default /tmp/compare-<time>)
  --report DIR      only print the tables again from a finished --out DIR
Exits 0 with "compare: skipped" when neither anchor's llama-bench is built.
EOF
}

IK=/tmp/anchors/ik_llama.cpp/build/bin
LL=/tmp/anchors/llama.cpp/build/bin
BIN=build/bin/mixtral
ROUNDS=2 THREADS=2 REPS=3 GEN=64
DEPTHS=() FILES=()
OUT="" REPORT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --ik) IK=$2; shift 2 ;;
    --llama) LL=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --gen) GEN=$2; shift 2 ;;
    --depth) DEPTHS+=("$2"); shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --report) REPORT=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "compare: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) FILES+=("$1"); shift ;;
  esac
done

command -v python3 >/dev/null || { echo "compare: needs python3 (standard library only)" >&2; exit 1; }

# The tables: parse every raw output listed in runs.tsv, keep the best sample per figure.
report() {
  python3 - "$1" <<'PY'
import csv, json, os, re, sys
out = sys.argv[1]
runs = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "runs.tsv")) if l.strip()]
meta = json.load(open(os.path.join(out, "meta.json")))
gen = meta["gen"]
samples = []  # file, engine, variant, round, figure, tokens_per_s, roofline_tokens_per_s

def add(f, eng, var, rnd, fig, ts, roof=None):
    samples.append({"file": f, "engine": eng, "variant": var, "round": int(rnd), "figure": fig,
                    "tokens_per_s": float(ts), "roofline_tokens_per_s": roof})

ceilings = {}  # file -> best read GB/s and int8 GOPS our bench measured

def ours(f, var, rnd, path):
    j = json.load(open(path))
    c = ceilings.setdefault(f, {"read_gbps": 0, "int8_gops": 0})
    for k in c:
        c[k] = max(c[k], j["ceilings"][k])
    if var == "short":
        for ts in j["prefill"]["runs"]:
            add(f, "ours", "", rnd, "prefill %d" % j["prefill"]["tokens"], ts, j["prefill"]["roofline_tokens_per_s"])
        for d in j["decode"]:
            for ts in d["runs"]:
                add(f, "ours", "", rnd, "decode b%d" % d["batch"], ts, d["roofline_tokens_per_s"])
        return
    for d in j["depth"]:
        for ts in d["prefill"]["runs"]:
            add(f, "ours", "", rnd, "prefill %d" % d["depth"], ts, d["prefill"]["roofline_tokens_per_s"])
        for dd in d["decode"]:
            for ts in dd.get("runs", []):  # a skipped batch has none
                add(f, "ours", "", rnd, "decode b%d @%d" % (dd["batch"], d["depth"]), ts, dd["roofline_tokens_per_s"])

def llama_bench(f, eng, var, rnd, path):
    for t in json.load(open(path)):
        npp, ntg = int(t["n_prompt"]), int(t["n_gen"])
        if ntg == 0:
            fig = "prefill %d" % npp
        elif npp == 0:
            fig = "decode b1"
        elif re.fullmatch(r"tg\d+@pp\d+", t.get("test", "")):  # ik's -gp: only the tg is timed
            fig = "decode b1 @%d" % npp
        else:
            continue
        for ts in t["samples_ts"]:
            add(f, eng, var, rnd, fig, ts)

def batched(f, eng, var, rnd, path):
    # |    PP |     TG |    B |   N_KV |   T_PP s | S_PP t/s |   T_TG s | S_TG t/s |      T s |    S t/s |
    # S_TG = B * TG / T_TG: the aggregate decode rate over the batch.
    # ik_llama.cpp prints the table to stderr (LOG_TEE), llama.cpp to stdout: read both.
    text = open(path, errors="replace").read()
    if os.path.exists(path + ".err"):
        text += open(path + ".err", errors="replace").read()
    for line in text.splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 10 and re.fullmatch(r"\d+", cols[0]) and int(cols[1]) == gen:
            add(f, eng, var, rnd, "decode b%d" % int(cols[2]), float(cols[7]))

failed = {}  # file -> commands that failed or could not be parsed
for f, eng, var, rnd, kind, path, st in runs:
    try:
        if st != "ok":
            raise ValueError("exit status")
        if kind == "ours":
            ours(f, var, rnd, path)
        elif kind == "llama-bench":
            llama_bench(f, eng, var, rnd, path)
        else:
            batched(f, eng, var, rnd, path)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
        failed.setdefault(f, []).append("%s %s round %s: %s (%s)" % (eng, var or kind, rnd, os.path.basename(path), e))

with open(os.path.join(out, "samples.csv"), "w", newline="") as fh:
    w = csv.DictWriter(fh, fieldnames=list(samples[0].keys()) if samples else ["file"])
    w.writeheader()
    w.writerows(samples)
json.dump(samples, open(os.path.join(out, "samples.json"), "w"), indent=1)

def best(f, eng, fig):
    c = [s for s in samples if s["file"] == f and s["engine"] == eng and s["figure"] == fig]
    return max(c, key=lambda s: s["tokens_per_s"]) if c else None

figs = ["prefill 512", "decode b1", "decode b32"]
for d in meta["depths"]:
    figs += ["prefill %d" % d, "decode b1 @%d" % d]
lines = []
for f in meta["files"]:
    engines = [e for e in ("ik", "llama") if any(s["file"] == f and s["engine"] == e for s in samples)]
    lines.append("== %s: %d rounds, %d threads, decode %d steps; tok/s, the best sample of each engine"
                 % (f, meta["rounds"], meta["threads"], gen))
    if f in ceilings:
        lines.append("   our ceilings (best probe): read %.1f GB/s, int8 %.0f GOPS; %%roof: ours against its roofline"
                     % (ceilings[f]["read_gbps"], ceilings[f]["int8_gops"]))
    head = "%-18s %9s %6s" % ("figure", "ours", "%roof")
    for e in engines:
        head += " %18s %8s" % ("ik_llama.cpp" if e == "ik" else "llama.cpp", "ours/" + e)
    lines.append(head)
    for fig in figs:
        o = best(f, "ours", fig)
        row = "%-18s %9s %6s" % (fig, "%.1f" % o["tokens_per_s"] if o else "-",
                                 "%.0f%%" % (100 * o["tokens_per_s"] / o["roofline_tokens_per_s"])
                                 if o and o["roofline_tokens_per_s"] else "-")
        for e in engines:
            a = best(f, e, fig)
            if a:
                tag = " (%s)" % a["variant"] if a["variant"] else ""
                row += " %18s %8s" % ("%.1f%s" % (a["tokens_per_s"], tag),
                                      "%.2f" % (o["tokens_per_s"] / a["tokens_per_s"]) if o else "-")
            else:
                row += " %18s %8s" % ("-", "-")
        lines.append(row)
    if best(f, "ik", "decode b32"):
        lines.append("   ik's decode b32 is llama-batched-bench's S_TG (32 x %d tokens / time): its 32 sequences are one" % gen)
        lines.append("   token id repeated, so all route to the same 2 experts per layer; ours are distinct random tokens.")
    for x in failed.get(f, []):
        lines.append("   failed: " + x)
    lines.append("")
text = "\n".join(lines)
open(os.path.join(out, "table.txt"), "w").write(text + "\n")
print(text)
PY
}

if [ -n "$REPORT" ]; then
  report "$REPORT"
  exit $?
fi
[ ${#FILES[@]} -gt 0 ] || { usage >&2; exit 2; }
for v in "$ROUNDS" "$THREADS" "$REPS" "$GEN" "${DEPTHS[@]}"; do
  [[ "$v" =~ ^[0-9]+$ ]] || { echo "compare: '$v' is not a whole number" >&2; exit 2; }
done
[ "$ROUNDS" -ge 2 ] || { echo "compare: --rounds must be at least 2 (engines alternate)" >&2; exit 2; }
for i in "${!FILES[@]}"; do
  [ -f "${FILES[i]}" ] || { echo "compare: no such file: ${FILES[i]}" >&2; exit 2; }
  FILES[i]=$(cd "$(dirname "${FILES[i]}")" && pwd)/$(basename "${FILES[i]}")  # commands run in $OUT/raw
done

HAVE_IK=0 HAVE_LL=0
[ -x "$IK/llama-bench" ] && HAVE_IK=1
[ -x "$LL/llama-bench" ] && HAVE_LL=1
if [ $HAVE_IK -eq 0 ] && [ $HAVE_LL -eq 0 ]; then
  echo "compare: skipped: no anchor built (no $IK/llama-bench, no $LL/llama-bench);"
  echo "         build ik_llama.cpp (cmake -B build && cmake --build build --target llama-bench llama-batched-bench)"
  exit 0
fi
[ $HAVE_IK -eq 1 ] && IK=$(cd "$IK" && pwd)
[ $HAVE_LL -eq 1 ] && LL=$(cd "$LL" && pwd)
[ $HAVE_IK -eq 1 ] || echo "compare: no $IK/llama-bench: comparing with llama.cpp only"
[ -x "$BIN" ] || { echo "compare: no $BIN (build it: cmake --build build --target mixtral)" >&2; exit 1; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")

OUT=${OUT:-/tmp/compare-$(date -u +%Y%m%dT%H%M%S)}
mkdir -p "$OUT/raw"
OUT=$(cd "$OUT" && pwd)
: > "$OUT/runs.tsv"
python3 -c 'import json,sys; a=sys.argv; print(json.dumps({"files":[__import__("os").path.basename(f) for f in a[5:]],"rounds":int(a[1]),"threads":int(a[2]),"gen":int(a[3]),"depths":[int(d) for d in a[4].split()]}))' \
  "$ROUNDS" "$THREADS" "$GEN" "${DEPTHS[*]}" "${FILES[@]}" > "$OUT/meta.json"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "ours: $BIN ($(git -C "$(dirname "$BIN")" rev-parse --short HEAD 2>/dev/null || echo '?'))"
  for d in "$IK" "$LL"; do [ -f "$d/../../ANCHOR_COMMIT" ] && echo "anchor $d: $(cat "$d/../../ANCHOR_COMMIT")"; done
  echo "args: rounds $ROUNDS threads $THREADS reps $REPS gen $GEN depths ${DEPTHS[*]:-none}"
  grep -m1 "model name" /proc/cpuinfo
} > "$OUT/environment.txt"

DEPTH_LIST=$(IFS=,; echo "${DEPTHS[*]}")
# One command: its stdout (and stderr) kept in raw/, a line in runs.tsv (ok or failed).
run() {  # label engine variant round kind outfile cmd...
  local label=$1 eng=$2 var=$3 rnd=$4 kind=$5 file=$6; shift 6
  echo "compare: [$label round $rnd] $eng${var:+ $var}: $*" >&2
  local st=ok
  (cd "$OUT/raw" && "$@" > "$file" 2> "$file.err") || st=failed
  [ "$st" = ok ] || echo "compare:   failed (exit status), see $file.err" >&2
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$label" "$eng" "$var" "$rnd" "$kind" "$file" "$st" >> "$OUT/runs.tsv"
}

run_ours() {  # file label round
  local f=$1 l=$2 r=$3 p="$OUT/raw/$2.r$3.ours"
  run "$l" ours short "$r" ours "$p.json" "$BIN" bench --model "$f" --threads "$THREADS" --prompt 512 \
      --gen "$GEN" --batch 1,32 --repeat "$REPS" --json
  if [ -n "$DEPTH_LIST" ]; then
    run "$l" ours depth "$r" ours "$p-depth.json" "$BIN" bench --model "$f" --threads "$THREADS" --prompt 64 \
        --gen "$GEN" --batch 1 --repeat 1 --depth "$DEPTH_LIST" --json
  fi
}

run_anchor() {  # engine dir file label round
  local eng=$1 dir=$2 f=$3 l=$4 r=$5
  local variants=("")
  [ "$eng" = ik ] && variants=("rtr0" "rtr1")
  for v in "${variants[@]}"; do
    local p="$OUT/raw/$l.r$r.$eng${v:+-$v}" rtr=()
    [ -n "$v" ] && rtr=(-rtr "${v#rtr}")
    run "$l" "$eng" "$v" "$r" llama-bench "$p.json" "$dir/llama-bench" -m "$f" -t "$THREADS" -fa 1 "${rtr[@]}" \
        -p 512 -n "$GEN" -r "$REPS" -o json
    if [ -n "$DEPTH_LIST" ]; then
      # ik's -gp N,G times G generated tokens after an untimed prompt of N; llama.cpp of this
      # vintage has no such test, so it gets the prefill only.
      local gp=()
      if [ "$eng" = ik ]; then for d in "${DEPTHS[@]}"; do gp+=(-gp "$d,$GEN"); done; fi
      run "$l" "$eng" "$v" "$r" llama-bench "$p-depth.json" "$dir/llama-bench" -m "$f" -t "$THREADS" -fa 1 "${rtr[@]}" \
          -p "$DEPTH_LIST" -n 0 "${gp[@]}" -r 1 -o json
    fi
    if [ -x "$dir/llama-batched-bench" ]; then
      # Batch 32 aggregate: 32 sequences of a 32-token prompt (ours: --batch 32 starts each user
      # from 32 tokens), then GEN steps; -npl repeated gives REPS samples in one process.
      # ik's common options take -fa 1 and -rtr as a flag; llama.cpp's take -fa as a flag.
      local npl flags=(-fa)
      npl=$(printf '32,%.0s' $(seq "$REPS")); npl=${npl%,}
      [ "$eng" = ik ] && flags=(-fa 1)
      [ "$v" = rtr1 ] && flags+=(-rtr)
      run "$l" "$eng" "$v" "$r" batched "$p-batched.txt" "$dir/llama-batched-bench" -m "$f" -t "$THREADS" \
          "${flags[@]}" -c $((32 * (32 + GEN) + 256)) -b 2048 -ub 512 -npp 32 -ntg "$GEN" -npl "$npl"
    fi
  done
}

for f in "${FILES[@]}"; do
  l=$(basename "$f")
  for r in $(seq "$ROUNDS"); do
    engines=(ours)
    [ $HAVE_IK -eq 1 ] && engines+=(ik)
    [ $HAVE_LL -eq 1 ] && engines+=(llama)
    # Alternate who goes first, so a slow phase of the machine does not always hit one engine.
    if [ $((r % 2)) -eq 0 ]; then
      rev=(); for ((i = ${#engines[@]} - 1; i >= 0; i--)); do rev+=("${engines[i]}"); done; engines=("${rev[@]}")
    fi
    for e in "${engines[@]}"; do
      case $e in
        ours) run_ours "$f" "$l" "$r" ;;
        ik) run_anchor ik "$IK" "$f" "$l" "$r" ;;
        llama) run_anchor llama "$LL" "$f" "$l" "$r" ;;
      esac
    done
  done
done
report "$OUT"
echo "compare: raw outputs and samples in $OUT"
