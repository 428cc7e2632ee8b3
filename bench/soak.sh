#!/usr/bin/env bash
# The soak test (bench/README.md "Soak"): starts the real engram binary on a fresh
# temp data dir on loopback, runs engram-soak against it for SOAK_SECONDS, then stops
# the server with SIGTERM and checks that it exits 0. Bounded in time; ends only the
# server it started.
#
#   bench/soak.sh [build-dir]                 SOAK_SECONDS=300 (default)
#   SOAK_ARGS="--writers 8 --write-rate 0" bench/soak.sh build   (engram-soak --help)
#   SOAK_SET="storage.block_cache_mb=256" bench/soak.sh build     (server settings)
#
# The server runs with small caches (32 MiB block cache, 8 MiB write buffers) so
# that they fill during warm-up and RSS after it shows growth that is not a cache.
set -euo pipefail

BUILD=${1:-build}
BIN=$BUILD/bin
SECS=${SOAK_SECONDS:-300}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/engram-soak-XXXXXX")
PID=""

cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill "$PID"; wait "$PID" || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

SET=()
for kv in ${SOAK_SET:-storage.block_cache_mb=32 storage.write_buffer_mb=8}; do SET+=(--set "$kv"); done
# The access log is on, as in the default configuration; it goes to a file.
"$BIN/engram" --addr 127.0.0.1:0 --data-dir "$WORK/data" --durability sync --log-level info "${SET[@]}" \
  2>"$WORK/server.log" &
PID=$!
PORT=""
for _ in $(seq 1 600); do
  PORT=$(sed -n 's/.*http: listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/server.log" | head -1)
  if [ -n "$PORT" ] && curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; then break; fi
  PORT=""
  sleep 0.1
done
[ -n "$PORT" ] || { echo "server did not become ready" >&2; cat "$WORK/server.log" >&2; exit 1; }

echo "# engram soak — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), server: ${SET[*]}"
status=0
# shellcheck disable=SC2086
"$BIN/engram-soak" --port "$PORT" --seconds "$SECS" ${SOAK_ARGS:-} || status=$?

kill -TERM "$PID"
if wait "$PID"; then echo "  server exited 0 on SIGTERM"; else echo "FAIL server exit status $? on SIGTERM"; status=1; fi
PID=""
errors='^[0-9T:.-]+ (error|critical) |"level":"(error|critical)"'
echo "  server log: $(grep -cE "$errors" "$WORK/server.log" || true) error lines of $(wc -l <"$WORK/server.log")"
grep -E "$errors" "$WORK/server.log" | head -5 || true
echo "  data dir: $(du -sh "$WORK/data" | cut -f1)"
exit $status
