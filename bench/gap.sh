#!/usr/bin/env bash
# What search indexing costs appends at saturation (issue 23's "indexing gap"),
# and what the indexer's yield (search.yield_backlog) trades for it. Relaxed
# POST /workunit with 40-word texts under wrk, three settings alternating in each
# round: search on (the indexer yields: the default), search on with the yield
# off, and search off. For each run: appends/s, the indexer thread's CPU during
# the load (of one core), the backlog when the load stops, how long the index
# then takes to catch up, and the seconds the indexer paused. A fresh server and
# data directory per run.
#
#   bench/gap.sh [build-dir]      BENCH_SECONDS=12 BENCH_ROUNDS=2 BENCH_CONNS=50
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

BUILD=${1:-build}
SECS=${BENCH_SECONDS:-12}
ROUNDS=${BENCH_ROUNDS:-2}
CONNS=${BENCH_CONNS:-50}
[ -x "$BUILD/bin/engram" ] || { echo "no $BUILD/bin/engram: build first (make build)" >&2; exit 1; }
install_missing wrk jq curl

WORK=$(mktemp -d "${TMPDIR:-/tmp}/engram-gap-XXXXXX")
ENGRAM_PID=""
cleanup() {
  set +e
  if [ -n "$ENGRAM_PID" ] && kill "$ENGRAM_PID" 2>/dev/null; then wait "$ENGRAM_PID"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# 40 words from a 30-word vocabulary, different in each request, and a unique token.
cat >"$WORK/append.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local words = {"deploy","the","service","after","review","merge","branch","fix","flaky","test","in","storage",
  "layer","agent","reported","latency","spike","while","indexing","search","results","for","context","queue",
  "retry","timeout","config","update","release","notes"}
local n = 0
function request()
  n = n + 1
  local t = {}
  for i = 1, 40 do t[i] = words[((n * 7 + i * 13) % #words) + 1] end
  return wrk.format(nil, nil, nil, '{"context_id":"bench/gap","agent_id":"bench","type":1,"text":"' ..
    table.concat(t, " ") .. ' n' .. n .. '"}')
end
LUA

now() { date +%s.%N; }
lag() { curl -sf "http://127.0.0.1:$ENGRAM_PORT/readyz" | jq '.search.lag // 0'; }

run() {  # label engram-arguments…
  local label=$1 stat="" i0=0 i1=0 started backlog caught yielded
  shift
  rm -rf "$WORK/data"
  engram_start "$BUILD/bin/engram" "$WORK/engram.log" --data-dir "$WORK/data" --durability relaxed "$@"
  local tid
  tid=$(grep -l '^indexer$' /proc/"$ENGRAM_PID"/task/*/comm 2>/dev/null | head -1 | cut -d/ -f5 || true)
  [ -n "$tid" ] && stat=/proc/$ENGRAM_PID/task/$tid/stat
  [ -n "$stat" ] && i0=$(awk '{print $14 + $15}' "$stat")
  wrk -t2 -c"$CONNS" -d"${SECS}s" -s "$WORK/append.lua" "http://127.0.0.1:$ENGRAM_PORT/workunit" >"$WORK/wrk.txt"
  [ -n "$stat" ] && i1=$(awk '{print $14 + $15}' "$stat")
  started=$(now)
  backlog=$(lag)
  for _ in $(seq 1 6000); do  # at most ~10 minutes
    [ "$(lag)" = 0 ] && break
    sleep 0.1
  done
  caught=$(awk -v a="$started" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
  yielded=$(curl -sf "http://127.0.0.1:$ENGRAM_PORT/metrics" |
    awk '/^engram_search_indexer_yield_seconds_total /{ printf "%.1f", $2 }')
  awk -v label="$label" -v ticks=$((i1 - i0)) -v hz="$(getconf CLK_TCK)" -v secs="$SECS" -v backlog="$backlog" \
    -v caught="$caught" -v yielded="${yielded:-0}" '
    /Requests\/sec/ { rps = $2 }
    /Non-2xx/ { bad = $NF }
    END {
      printf "  %-18s %8.0f appends/s  indexer CPU %3.0f%%  backlog %7d  caught up after %5.1f s  paused %4.1f s%s\n",
        label, rps, 100 * ticks / hz / secs, backlog, caught, yielded, bad ? "  non-2xx " bad : ""
    }' "$WORK/wrk.txt"
  kill "$ENGRAM_PID"
  wait "$ENGRAM_PID" || true
  ENGRAM_PID=""
}

echo "# indexing gap: relaxed POST /workunit, 40-word texts, $CONNS connections, ${SECS}s per run," \
  "commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%FT%TZ)"
for round in $(seq 1 "$ROUNDS"); do
  echo "## round $round"
  run "yield (default)"
  run "yield off" --set search.yield_backlog=0
  run "search off" --set search.enabled=false
done
