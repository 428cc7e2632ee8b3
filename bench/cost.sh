#!/usr/bin/env bash
# Cost per request, counted instead of timed (issue 23): the instructions the
# whole server process executes per request, and its calls to the allocator,
# under valgrind's callgrind. Counts hardly depend on what else the machine is
# doing (only work done per second, such as the log flush, follows the clock), so
# a change of a few per cent shows where a timed A/B drowns in noise.
# Each kind runs twice on a fresh server, with SHORT and LONG requests on one
# keep-alive connection; the difference divided by LONG - SHORT is the cost of one
# request, without start-up and shutdown.
#
#   bench/cost.sh [build-dir] [kinds…]   kinds: append append-search get last100
#   BENCH_COST_SHORT=200 BENCH_COST_LONG=2200
#
# append is a relaxed 300-byte POST /workunit with search off (the request path
# alone); append-search the same with the index on (it adds the indexer's work,
# whose batching follows timing, so it repeats less exactly); get is GET
# /workunit/{id}; last100 is GET /workunits/{ctx}?limit=100&reverse=true over 200
# units. Installs valgrind from Debian's packages when missing.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

BUILD=${1:-build}
shift || true
KINDS=${*:-append append-search get last100}
SHORT=${BENCH_COST_SHORT:-200}
LONG=${BENCH_COST_LONG:-2200}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -x "$BUILD/bin/engram" ] || { echo "no $BUILD/bin/engram: build first (make build)" >&2; exit 1; }
for kind in $KINDS; do
  case $kind in append | append-search | get | last100) ;; *) echo "unknown kind: $kind" >&2; exit 1 ;; esac
done
install_missing valgrind

WORK=$(mktemp -d "${TMPDIR:-/tmp}/engram-cost-XXXXXX")
ENGRAM_PID=""
cleanup() {
  set +e  # on the way out after a failure too: nothing here may stop the cleanup
  if [ -n "$ENGRAM_PID" ] && kill "$ENGRAM_PID" 2>/dev/null; then
    for _ in $(seq 1 300); do kill -0 "$ENGRAM_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$ENGRAM_PID" 2>/dev/null
    wait "$ENGRAM_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# One server under callgrind, N requests, a graceful stop; prints "instructions allocations".
measure() {  # kind n
  local kind=$1 n=$2 dir="$WORK/$1-$2" args=(--durability relaxed)
  mkdir -p "$dir"
  [ "$kind" = append-search ] || args+=(--set search.enabled=false)
  cat > "$dir/engram" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out" --log-file="$dir/valgrind.log" \
  "$(cd "$BUILD" && pwd)/bin/engram" "\$@"
WRAP
  chmod +x "$dir/engram"
  engram_start "$dir/engram" "$dir/server.log" --data-dir "$dir/data" "${args[@]}"
  python3 "$HERE/cost.py" requests "$ENGRAM_PORT" "${kind%-search}" "$n"
  kill -TERM "$ENGRAM_PID"
  wait "$ENGRAM_PID" || { echo "engram under callgrind did not stop cleanly" >&2; cat "$dir/server.log" >&2; exit 1; }
  ENGRAM_PID=""
  python3 "$HERE/cost.py" count "$dir/callgrind.out"
}

echo "| request | instructions per request | allocations per request |"
echo "|---|---|---|"
for kind in $KINDS; do
  measure "$kind" "$SHORT" > "$WORK/short"  # not in a subshell: the trap must see ENGRAM_PID
  measure "$kind" "$LONG" > "$WORK/long"
  read -r i0 a0 < "$WORK/short"
  read -r i1 a1 < "$WORK/long"
  awk -v k="$kind" -v i="$((i1 - i0))" -v a="$((a1 - a0))" -v n="$((LONG - SHORT))" \
    'BEGIN { printf "| %s | %.0f | %.1f |\n", k, i / n, a / n }'
done
echo
echo "$BUILD/bin/engram, checkout at $(git -C "$HERE" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%F), $((LONG - SHORT)) requests counted per kind"
