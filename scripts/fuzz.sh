#!/usr/bin/env bash
# Runs every libFuzzer harness of a fuzz build (make fuzz) for a bounded time on the corpus
# checked in under fuzz/corpus/<harness>, one harness at a time (the cores are shared).
#   scripts/fuzz.sh run BUILD SECONDS [HARNESS...]   new inputs go to a temp work corpus, never
#                                                    to git; fails if any harness crashes
#   scripts/fuzz.sh merge BUILD DIR... (one harness per call via FUZZ_HARNESS=name)
#                                                    re-minimizes fuzz/corpus/<name> with
#                                                    -merge=1 from it plus DIR...
# Crash inputs land in $FUZZ_ARTIFACTS (default BUILD/artifacts); per-harness logs there too.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: fuzz.sh run|merge BUILD ...}
build=${2:?build dir}
shift 2
art=${FUZZ_ARTIFACTS:-$build/artifacts}
mkdir -p "$art"

dict_for() {  # which keyword dictionary a harness gets
  case "$1" in
    safetensors | st_index | config | cache) echo fuzz/dict/json.dict ;;
    gguf) echo fuzz/dict/gguf.dict ;;
    torch) echo fuzz/dict/torch.dict ;;
    pickle) echo fuzz/dict/pickle.dict ;;
    tokenizer) echo fuzz/dict/tokenizer.dict ;;
    server_api) echo fuzz/dict/server.dict ;;
    http_head) echo fuzz/dict/http.dict ;;
  esac
}

# Memory per input is bounded (a loader that allocates from a size field it did not check
# shows up as a malloc-limit crash); 10 s per input flags hangs.
LIMITS=(-rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=10)

case "$mode" in
  run)
    seconds=${1:?seconds}
    shift
    harnesses=("$@")
    if [ ${#harnesses[@]} -eq 0 ]; then
      for f in fuzz/*_fuzz.cc; do harnesses+=("$(basename "$f" _fuzz.cc)"); done
    fi
    failed=()
    for h in "${harnesses[@]}"; do
      work=$(mktemp -d "${TMPDIR:-/tmp}/mixtral-fuzz-corpus-$h.XXXXXX")
      log="$art/$h.log"
      echo "fuzz: $h for ${seconds}s (log $log)"
      # The first corpus folder receives new inputs: the temp one, so fuzz/corpus stays as is.
      if "$build/bin/${h}_fuzz" "${LIMITS[@]}" -max_total_time="$seconds" -print_final_stats=1 \
          -dict="$(dict_for "$h")" -artifact_prefix="$art/$h-" "$work" "fuzz/corpus/$h" >"$log" 2>&1; then
        echo "fuzz: $h ok: $(grep -E '^#[0-9]+' "$log" | tail -1 | sed 's/  */ /g')"
      else
        echo "fuzz: $h FAILED; inputs in $art/$h-*; tail of the log:" >&2
        tail -30 "$log" >&2
        failed+=("$h")
      fi
      if [ -n "${FUZZ_KEEP:-}" ]; then  # keep the work corpus for a later merge
        mkdir -p "$FUZZ_KEEP/$h" && cp -n "$work"/* "$FUZZ_KEEP/$h/" 2>/dev/null || true
      fi
      rm -rf "$work"
    done
    if [ ${#failed[@]} -ne 0 ]; then
      echo "fuzz: crashes in: ${failed[*]}" >&2
      exit 1
    fi
    ;;
  merge)
    h=${FUZZ_HARNESS:?set FUZZ_HARNESS}
    dest="fuzz/corpus/$h"
    fresh=$(mktemp -d "${TMPDIR:-/tmp}/mixtral-fuzz-merge-$h.XXXXXX")
    mkdir -p "$dest"
    # Keep the smallest set of inputs that covers everything the old corpus and DIR... cover.
    "$build/bin/${h}_fuzz" "${LIMITS[@]}" -merge=1 -dict="$(dict_for "$h")" "$fresh" "$dest" "$@" \
      >"$art/$h-merge.log" 2>&1
    rm -rf "$dest" && mv "$fresh" "$dest"
    chmod 755 "$dest"
    echo "fuzz: $dest: $(ls "$dest" | wc -l) inputs, $(du -sh "$dest" | cut -f1)"
    ;;
  *) echo "usage: fuzz.sh run|merge BUILD ..." >&2; exit 2 ;;
esac
