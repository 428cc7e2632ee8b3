#!/usr/bin/env bash
# Runs the end-to-end benchmarks of bench/README.md against the real engram binary on
# loopback, then the micro-benchmarks. Bounded: every run has a fixed duration.
#
#   bench/run.sh [build-dir] [sections…]     sections: write indexing read isolation streams drafts locks agents search vectors packet mcp sdk micro
#   BENCH_SECONDS=10 BENCH_UNITS=1000000 BENCH_TARGET_UNITS=100000 bench/run.sh build
#   BENCH_SEARCH_UNITS=1000000 bench/run.sh build search
#   BENCH_SEARCH_SET="search.fsync=true" bench/run.sh build search   (server settings)
#   BENCH_LAG_SECONDS=60: length of the ack → searchable run
#   BENCH_PACKET_UNITS=100000: units of the packet bench's context
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

BUILD=${1:-build}
shift || true
SECTIONS=${*:-write indexing read isolation streams drafts locks agents search vectors packet mcp sdk micro}
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
BIN=$BUILD/bin
SECS=${BENCH_SECONDS:-10}
UNITS=${BENCH_UNITS:-1000000}
TARGET_UNITS=${BENCH_TARGET_UNITS:-100000}
SEARCH_UNITS=${BENCH_SEARCH_UNITS:-1000000}
SEARCH_SET=()
for kv in ${BENCH_SEARCH_SET:-}; do SEARCH_SET+=(--set "$kv"); done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/engram-bench-XXXXXX")
PID=""
PORT=""

cleanup() {
  PID=${PID:-${ENGRAM_PID:-}}  # a server that never became ready too
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill "$PID"; wait "$PID" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

start_server() {  # durability data-dir [--set key=value…]
  engram_start "$BIN/engram" "$WORK/server.log" --data-dir "$2" --durability "$1" "${@:3}"
  PID=$ENGRAM_PID PORT=$ENGRAM_PORT
}

stop_server() {
  echo "  server RSS before stop: $(ps -o rss= -p "$PID" | awk '{printf "%.0f MiB", $1/1024}')"
  kill "$PID"; wait "$PID" || true; PID=""
}

echo "# engram benchmarks — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if has write; then
echo "## single-unit POST /workunit, 300-byte payload, ${SECS}s per run"
for mode in sync relaxed; do
  start_server "$mode" "$WORK/write-$mode"
  for c in 1 16 64; do
    "$BIN/engram-load" write --port "$PORT" --connections "$c" --seconds "$SECS" --payload-bytes 300 --label "$mode"
  done
  curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^engram_storage_(commit_groups_total|events_written_total)' | sed 's/^/  /'
  stop_server
done
fi

if has indexing; then
# BENCH_ROUNDS (1) interleaves rounds: on, off, on, off… (runs differ by up to 30%).
# BENCH_INDEXER_NICE (0) is search.indexer_nice for the runs with search on, and
# BENCH_YIELD_BACKLOG (10000) search.yield_backlog (0: the indexer never yields).
echo "## what the search index costs appends: POST /workunit, 300 B, 50 connections, one context per connection, ${SECS}s, search on then off"
for mode in sync relaxed; do
  for round in $(seq 1 "${BENCH_ROUNDS:-1}"); do
    for search in true false; do
      start_server "$mode" "$WORK/indexing-$mode-$search-$round" --set "search.enabled=$search" \
        --set "search.indexer_nice=${BENCH_INDEXER_NICE:-0}" --set "search.yield_backlog=${BENCH_YIELD_BACKLOG:-10000}"
      "$BIN/engram-load" write --port "$PORT" --connections 50 --seconds "$SECS" --payload-bytes 300 \
        --label "$mode round=$round search=$search"
      stop_server
    done
  done
done
fi

if has read; then
echo "## GET /workunits/{ctx}?limit=100&reverse=true, ${TARGET_UNITS} units in the context, ${UNITS} in all"
start_server relaxed "$WORK/read"
"$BIN/engram-load" seed --port "$PORT" --connections 2 --units "$UNITS" --target-units "$TARGET_UNITS" \
  --context bench/target --payload-bytes 300
stop_server
# Restart so reads come from a recovered database, not a warm writer.
start_server sync "$WORK/read"
for c in 1 16; do
  "$BIN/engram-load" read --port "$PORT" --connections "$c" --seconds "$SECS" --context bench/target --limit 100
done
stop_server
echo "  data dir size: $(du -sh "$WORK/read" | cut -f1)"
fi

if has isolation; then
# Storage reads run on the read pool, not on I/O threads (DESIGN.md §3): with one
# I/O thread, 1000-unit pages must not stall a writer's requests on that thread.
echo "## 1-connection POST /workunit alone, then beside GET /workunits/{ctx}?limit=1000 on 4 connections (server.threads=1, ${SECS}s each)"
start_server sync "$WORK/isolation" --set server.threads=1
"$BIN/engram-load" seed --port "$PORT" --connections 2 --units 20000 --target-units 20000 \
  --context bench/pages --payload-bytes 300
"$BIN/engram-load" write --port "$PORT" --connections 1 --seconds "$SECS" --payload-bytes 300 --label alone
"$BIN/engram-load" read --port "$PORT" --connections 4 --seconds "$SECS" --context bench/pages --limit 1000 \
  --label pages >"$WORK/pages.txt" &
PAGES=$!
"$BIN/engram-load" write --port "$PORT" --connections 1 --seconds "$SECS" --payload-bytes 300 --label beside-pages
wait "$PAGES"
cat "$WORK/pages.txt"
stop_server
fi

if has streams; then
echo "## streams: publish-to-receive latency at WebSocket subscribers (${SECS}s per run)"
start_server sync "$WORK/streams"
F="$BIN/engram-fanout"
# First, on the fresh process: memory freed by later runs would hide the growth.
"$F" idle    --port "$PORT" --subscribers 1000 --server-pid "$PID"
"$F" latency --port "$PORT" --subscribers 1    --contexts 1   --rate 200 --seconds "$SECS"
"$F" latency --port "$PORT" --subscribers 100  --contexts 1   --rate 200 --seconds "$SECS"
"$F" latency --port "$PORT" --subscribers 1000 --contexts 1   --rate 50  --seconds "$SECS"
"$F" latency --port "$PORT" --subscribers 1000 --contexts 100 --rate 200 --seconds "$SECS"
"$F" replay  --port "$PORT" --units 100000
stop_server
fi

if has drafts; then
echo "## drafts: delta publish-to-receive at WebSocket subscribers, nothing stored (${SECS}s per run)"
start_server sync "$WORK/drafts"
F="$BIN/engram-fanout"
"$F" drafts --port "$PORT" --subscribers 1    --rate 200 --seconds "$SECS"
"$F" drafts --port "$PORT" --subscribers 100  --rate 200 --seconds "$SECS"
"$F" drafts --port "$PORT" --subscribers 1000 --rate 50  --seconds "$SECS"
"$F" drafts --port "$PORT" --subscribers 1000 --rate 200 --seconds "$SECS" || true  # does not keep up yet: reported
stop_server
fi

if has locks; then
echo "## leases (${SECS}s per run, sync durability)"
start_server sync "$WORK/locks"
"$BIN/engram-load" locks  --port "$PORT" --connections 1  --resources 1   --seconds "$SECS" --label uncontended
"$BIN/engram-load" locks  --port "$PORT" --connections 64 --resources 1   --seconds "$SECS" --label contended-1
"$BIN/engram-load" locks  --port "$PORT" --connections 64 --resources 100 --seconds "$SECS" --label contended-100
"$BIN/engram-load" write  --port "$PORT" --connections 1  --seconds "$SECS" --label plain
"$BIN/engram-load" fenced --port "$PORT" --connections 1  --seconds "$SECS" --label fenced
stop_server
fi

if has agents; then
echo "## agent runtime: tasks and presence (sync durability)"
start_server sync "$WORK/agents"
"$BIN/engram-agents" tasks      --port "$PORT" --connections 1 --seconds "$SECS"
"$BIN/engram-agents" tasks      --port "$PORT" --connections 16 --seconds "$SECS"
"$BIN/engram-agents" stranding  --port "$PORT" --tasks 40 --ttl-ms 1000
"$BIN/engram-agents" heartbeats --port "$PORT" --pid "$PID" --agents 1000 --interval-ms 5000 --seconds 30 --connections 8
stop_server
fi

if has search; then
S="$BIN/engram-search-bench"
echo "## search: ${SEARCH_UNITS} units of ~30 Zipf-distributed words, 1000 contexts (sync durability) ${BENCH_SEARCH_SET:-}"
start_server sync "$WORK/search" "${SEARCH_SET[@]}"
"$S" seed --port "$PORT" --connections 2 --units "$SEARCH_UNITS"
docs=$(curl -s "http://127.0.0.1:$PORT/readyz" | sed -n 's/.*"documents":\([0-9]*\).*/\1/p')
bytes=$(du -sb "$WORK/search/search" | cut -f1)
total=$(du -sb "$WORK/search" | cut -f1)
echo "  index size: $((bytes / 1048576)) MiB for $docs units = $((bytes / docs)) bytes/unit (RocksDB: $(((total - bytes) / 1048576)) MiB)"
echo "### query latency, limit 20 with snippets, ${SECS}s per kind"
"$S" query --port "$PORT" --connections 1 --seconds "$SECS" --limit 20
echo "### the same at 4 connections"
"$S" query --port "$PORT" --connections 4 --seconds "$SECS" --limit 20
echo "### limit 100 (the v3 default), without snippets, 1 connection"
"$S" query --port "$PORT" --connections 1 --seconds "$SECS" --limit 100 --snippets false
LAG_SECS=${BENCH_LAG_SECONDS:-60}
echo "### ack → searchable under 2000 appends/s (${LAG_SECS}s: long enough to include a background merge)"
"$S" lag --port "$PORT" --rate 2000 --seconds "$LAG_SECS"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E '^engram_search_index_(commits_total|delay_seconds_(count|sum))' | sed 's/^/  /'
stop_server
echo "### indexing throughput: rebuild the whole index from the logs at start-up"
rm -rf "$WORK/search/search"
start_server sync "$WORK/search" "${SEARCH_SET[@]}"
"$S" wait --port "$PORT"
grep -E 'search: (index caught up|index at)' "$WORK/server.log" | sed 's/^/  /'
stop_server
fi

if has vectors; then
VEC_SIZES=${BENCH_VECTOR_SIZES:-100000 1000000}
VEC_UNITS=${BENCH_VECTOR_UNITS:-100000}
echo "## vectors: the HNSW index in-process on a real store (random unit vectors, dim 384)"
for n in $VEC_SIZES; do
  "$BIN/engram-vector-bench" --dir "$WORK/vectors-$n" --vectors "$n" --dim 384 2>/dev/null
  rm -rf "$WORK/vectors-$n"
done
echo "## semantic and hybrid search over HTTP: ${VEC_UNITS} units with text and 384-d vectors"
S="$BIN/engram-search-bench"
start_server sync "$WORK/vsearch"
"$S" seed --port "$PORT" --connections 2 --units "$VEC_UNITS" --dim 384
"$S" vquery --port "$PORT" --connections 1 --seconds "$SECS" --limit 10 --dim 384
stop_server
fi

if has packet; then
PACKET_UNITS=${BENCH_PACKET_UNITS:-100000}
echo "## memory packet: one context of ${PACKET_UNITS} units and 1000 facts (2 versions each), max_tokens 8000 (sync durability)"
start_server sync "$WORK/packet"
"$BIN/engram-search-bench" packet --port "$PORT" --units "$PACKET_UNITS" --facts 1000 --max-tokens 8000 --seconds "$SECS"
stop_server
fi

if has mcp; then
echo "## MCP tools append and read versus their REST routes, ${SECS}s per run (sync durability)"
start_server sync "$WORK/mcp"
"$BIN/engram-load" mcp --port "$PORT" --connections 1 --seconds "$SECS" --limit 10 --label c1
"$BIN/engram-load" mcp --port "$PORT" --connections 16 --seconds "$SECS" --limit 10 --label c16
stop_server
fi

if has sdk; then
echo "## C++ SDK versus raw HTTP/WebSocket (sync durability)"
start_server sync "$WORK/sdk"
S="$BIN/engram-sdk-bench"
"$S" append    --port "$PORT" --ops 5000 --connections 1
"$S" append    --port "$PORT" --ops 5000 --connections 8
"$BIN/engram-load" write --port "$PORT" --connections 16 --seconds "$SECS" --label raw
"$BIN/engram-load" write --port "$PORT" --connections 16 --seconds "$SECS" --label sdk --sdk
"$S" subscribe --port "$PORT" --rate 200 --seconds "$SECS"
"$S" replay    --port "$PORT" --units 100000
stop_server
fi

if has micro; then
echo "## micro-benchmarks"
"$BIN/engram-micro" --benchmark_min_time=0.5 2>/dev/null | sed -n '/^BM_/p'
fi
