#!/usr/bin/env bash
# Build the libedgead fuzz targets with clang (libFuzzer + AddressSanitizer + UndefinedBehaviorSanitizer) and run
# each for a bounded time.  usage: tests/c/fuzz/run.sh [SECONDS_PER_TARGET=25] [WORK_DIR=build/fuzz]
# Prints libFuzzer's final stats (executions, cov: edges) and, where llvm-cov is installed, the line coverage of
# the C core reached by the corpus. Exits non-zero on any crash, sanitizer report, leak or 5 s hang; the input
# that did it is left in WORK_DIR (add it to tests/c/fuzz/regressions/ once fixed).
set -euo pipefail
seconds=${1:-25}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
work=${2:-$root/build/fuzz}
src=$root/runtimes/c
cc=${CLANG:-clang}
command -v "$cc" >/dev/null || { echo "fuzz: $cc not found (apt-get install clang libclang-rt-dev)" >&2; exit 2; }
version=$(sed -n 's/^__version__ *= *"\([^"]*\)".*/\1/p' "$root/edgead/__init__.py")
mkdir -p "$work"
core=("$src/edgead_api.c" "$src/edgead_manifest.c" "$src/edgead_sha256.c" "$src/edgead_tiling.c" "$src/third_party/cjson/cJSON.c"
      "$here/harness_backend.c")
flags=(-g -O1 -std=c11 -D_GNU_SOURCE -I"$src" "-DEDGEAD_VERSION_STRING=\"$version\""
       -DEDGEAD_TEST_BACKEND=edgead_harness_backend -DCJSON_NESTING_LIMIT=64)
status=0
for target in manifest predict; do
  bin=$work/fuzz_$target
  "$cc" "${flags[@]}" -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    "${core[@]}" "$here/fuzz_$target.c" -o "$bin" -lm -lpthread
  mkdir -p "$work/corpus_$target"
  echo "== fuzz_$target: $seconds s"
  if ! "$bin" "$work/corpus_$target" "$here/corpus/$target" -max_total_time="$seconds" -timeout=5 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/$target-" 2>"$work/$target.log"; then
    status=1
    tail -40 "$work/$target.log" >&2
  fi
  grep -E "^#[0-9]+ *DONE|stat::number_of_executed_units|stat::new_units_added" "$work/$target.log" || true
  ls "$work/$target-"* 2>/dev/null && status=1
  # line coverage of the core sources reached by the corpus (optional: needs llvm-profdata / llvm-cov)
  if command -v llvm-cov >/dev/null && command -v llvm-profdata >/dev/null; then
    "$cc" "${flags[@]}" -fprofile-instr-generate -fcoverage-mapping "${core[@]}" "$here/fuzz_$target.c" \
      "$here/standalone.c" -o "$bin.cov" -lm -lpthread
    find "$work/corpus_$target" "$here/corpus/$target" -type f > "$work/$target.inputs"
    ls "$here/regressions/$target"_* >> "$work/$target.inputs"
    LLVM_PROFILE_FILE="$work/$target.profraw" xargs -a "$work/$target.inputs" "$bin.cov" >/dev/null
  fi

done
if [ -f "$work/manifest.profraw" ] && [ -f "$work/predict.profraw" ]; then
  echo "== line coverage of the C core by both corpora"
  llvm-profdata merge -o "$work/all.profdata" "$work/manifest.profraw" "$work/predict.profraw"
  llvm-cov report "$work/fuzz_manifest.cov" -object "$work/fuzz_predict.cov" -instr-profile="$work/all.profdata" \
    "$src/edgead_api.c" "$src/edgead_manifest.c" "$src/edgead_sha256.c" | sed -n '1,2p;/edgead_/p;/TOTAL/p'
fi
exit $status
