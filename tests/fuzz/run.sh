#!/usr/bin/env bash
# Runs each libFuzzer target for a bounded time (make fuzz calls this).
#   tests/fuzz/run.sh BUILD_DIR SECONDS TARGET…
# Each target starts from the committed corpus (tests/fuzz/corpus/<target>, read
# only) and keeps what it finds in BUILD_DIR/corpus/<target>; a crash leaves its
# input in BUILD_DIR/artifacts/ and fails the run. With FUZZ_MERGE=1 the new inputs
# that add coverage are merged into the committed corpus afterwards.
set -euo pipefail
build=$1 seconds=$2
shift 2
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$build/artifacts"
for target in "$@"; do
  work="$build/corpus/$target"
  mkdir -p "$work"
  echo "== fuzz_$target for ${seconds}s"
  log="$build/fuzz_$target.log"
  if ! "$build/bin/fuzz_$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -print_final_stats=1 -artifact_prefix="$build/artifacts/$target-" "$work" "$src/corpus/$target" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz_$target FAILED; the input is in $build/artifacts/, the log in $log" >&2
    exit 1
  fi
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added|stat::peak_rss_mb)' "$log" || true
  if [ "${FUZZ_MERGE:-}" = 1 ]; then
    "$build/bin/fuzz_$target" -merge=1 "$src/corpus/$target" "$work" 2>&1 | grep -E 'MERGE-OUTER: [0-9]+ new files' || true
  fi
done
