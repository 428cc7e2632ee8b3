#!/usr/bin/env bash
# Engram side by side with established peers on loopback (issue 23): Redis
# (streams, pub/sub), NATS (core pub/sub) and nginx (a static file). For each
# row, Engram runs and then its peer, back to back (A B A B … with BENCH_ROUNDS),
# each on a fresh server process of its own; the script ends with a markdown
# table of both figures and their ratio.
#
#   bench/peers.sh [build-dir] [rows…]      rows: durable relaxed get last100 fanout
#   BENCH_SECONDS=10                        length of each timed run
#   BENCH_ROUNDS=1                          Engram/peer pairs per row
#   BENCH_FANOUT="1:200 100:200 1000:50 1000:200"   subscribers:rate of the fan-out rows
#   BENCH_LAST100_UNITS=100000              units in the context / stream of "last 100"
#
# Installs redis-server, redis-tools, nats-server, nginx-light and wrk from Debian's
# packages when missing (as root, or through sudo). Every server is a foreground
# child of this script on 127.0.0.1, with its own temp dir and config: no system
# service is used or touched.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "$0")/lib.sh"

BUILD=${1:-build}
shift || true
ROWS=${*:-durable relaxed get last100 fanout}
has() { [[ " $ROWS " == *" $1 "* ]]; }
BIN=$BUILD/bin
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-1}
FANOUT=${BENCH_FANOUT:-1:200 100:200 1000:50 1000:200}
LAST_UNITS=${BENCH_LAST100_UNITS:-100000}
LIMIT=$((SECS * 3 + 120))  # no single tool run may take longer than this
PATH=$PATH:/usr/sbin       # nats-server and nginx live there
CONNS=50
VALUE=$(printf 'x%.0s' $(seq 300))  # the 300-byte payload of every append

for b in engram engram-load engram-fanout; do
  [ -x "$BIN/$b" ] || { echo "no $BIN/$b: build first (make build)" >&2; exit 1; }
done

install_missing redis-server redis-tools nats-server nginx-light wrk

WORK=$(mktemp -d "${TMPDIR:-/tmp}/engram-peers-XXXXXX")
chmod 755 "$WORK"  # nginx's workers run as another user and must reach their file
ENGRAM_PID="" REDIS_PID="" NATS_PID="" NGINX_PID=""

# Kills one server this script started (SIGTERM) and waits for it.
stop_pid() {
  if [ -n "$1" ] && kill -0 "$1" 2>/dev/null; then kill "$1"; wait "$1" 2>/dev/null || true; fi
}
cleanup() {
  stop_pid "$ENGRAM_PID"; stop_pid "$REDIS_PID"; stop_pid "$NATS_PID"; stop_pid "$NGINX_PID"
  rm -rf "$WORK"
}
trap cleanup EXIT

# A loopback port that nothing listens on now (taken right after).
free_port() {
  local p
  for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 10000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
  done
  echo "no free port found" >&2; return 1
}

wait_listening() {  # pid port name log
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; then return 0; fi
    kill -0 "$1" 2>/dev/null || break
    sleep 0.1
  done
  echo "$3 did not start" >&2; cat "$4" >&2; exit 1
}

# --- the servers --------------------------------------------------------------

engram_up() {  # durability data-dir
  engram_start "$BIN/engram" "$WORK/engram.log" --data-dir "$2" --durability "$1"
}
engram_down() { stop_pid "$ENGRAM_PID"; ENGRAM_PID=""; }

# Waits (bounded) until the search index has caught up (with "merged": and its
# background merges are done), so that what follows is not measured beside the
# indexing of a bulk load. A restarted idle server reports a pending merge that
# only a later index commit starts (it uses no CPU meanwhile): hence the choice.
engram_quiet() {  # [merged]
  local want='.search.lag == 0'
  [ "${1:-}" = merged ] && want+=' and .search.pending_merges == 0'
  for _ in $(seq 1 1200); do
    curl -sf "http://127.0.0.1:$ENGRAM_PORT/readyz" | jq -e ".search == null or ($want)" >/dev/null && return 0
    sleep 0.25
  done
  echo "  (search index still busy after 300 s)"
}

redis_up() {  # appendfsync (always|everysec|no: AOF off) data-dir
  REDIS_PORT=$(free_port)
  mkdir -p "$2"
  local aof=(--appendonly yes --appendfsync "$1")
  [ "$1" = no ] && aof=(--appendonly no)
  # No RDB snapshots: the AOF setting is what is compared.
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$2" --save '' --daemonize no \
    --logfile "$2/redis.log" "${aof[@]}" &
  REDIS_PID=$!
  wait_listening "$REDIS_PID" "$REDIS_PORT" redis-server "$2/redis.log"
  for _ in $(seq 1 600); do  # LOADING while it replays its AOF
    [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  echo "redis-server did not become ready" >&2; exit 1
}
redis_down() { stop_pid "$REDIS_PID"; REDIS_PID=""; }

nats_up() {
  NATS_PORT=$(free_port)
  nats-server -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
  NATS_PID=$!
  wait_listening "$NATS_PID" "$NATS_PORT" nats-server "$WORK/nats.log"
}
nats_down() { stop_pid "$NATS_PID"; NATS_PID=""; }

nginx_up() {  # file served as /unit
  NGINX_PORT=$(free_port)
  local d="$WORK/nginx"
  mkdir -p "$d/www" "$d/tmp"
  chmod 755 "$d" "$d/www"
  install -m 644 "$1" "$d/www/unit"
  cat >"$d/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  default_type application/json;
  keepalive_requests 100000000;
  client_body_temp_path $d/tmp/body;
  proxy_temp_path $d/tmp/proxy;
  fastcgi_temp_path $d/tmp/fastcgi;
  uwsgi_temp_path $d/tmp/uwsgi;
  scgi_temp_path $d/tmp/scgi;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    root $d/www;
  }
}
EOF
  nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" &
  NGINX_PID=$!
  wait_listening "$NGINX_PID" "$NGINX_PORT" nginx "$d/error.log"
}
nginx_down() { stop_pid "$NGINX_PID"; NGINX_PID=""; rm -rf "$WORK/nginx"; }

# --- the load tools: each sets RPS, P50, P99 (µs) and NOTE ------------------------

redis_bench_once() {  # clients requests command…
  RPS="" P50="" P99=""
  timeout "$LIMIT" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$1" -n "$2" --csv "${@:3}" >"$WORK/rb.csv" || true
  read -r RPS P50 P99 < <(awk -F'","' '
    NR == 1 { for (i = 1; i <= NF; i++) { gsub(/"/, "", $i); col[$i] = i }; next }
    { for (i = 1; i <= NF; i++) gsub(/"/, "", $i)
      print $col["rps"], $col["p50_latency_ms"] * 1000, $col["p99_latency_ms"] * 1000; exit }' "$WORK/rb.csv") || true
  NOTE=""
  [ -n "$RPS" ] || { NOTE=" (failed)"; cat "$WORK/rb.csv" >&2; }
}
# redis-benchmark counts requests, not seconds: a short run first (a warm-up)
# estimates the rate, then the measured run asks for SECS seconds' worth.
redis_bench() {  # clients command…
  redis_bench_once "$1" 5000 "${@:2}"
  redis_bench_once "$1" "$(awk -v r="${RPS:-0}" -v s="$SECS" 'BEGIN { n = int(r * s); print n < 1000 ? 1000 : n }')" "${@:2}"
  local cmd="${*:2}"
  echo "  redis       redis-benchmark -c $1 ${cmd//$VALUE/<300 B>}: rps=$RPS p50=${P50}us p99=${P99}us$NOTE"
}

wrk_run() {  # who url [connections] [lua script]
  local conns=${3:-$CONNS} threads=2 script=()
  [ "$conns" -ge 2 ] || threads=1
  [ -z "${4:-}" ] || script=(-s "$4")
  timeout "$LIMIT" wrk -t"$threads" -c"$conns" -d"${SECS}s" --latency "${script[@]}" "$2" >"$WORK/wrk.txt" || true
  read -r RPS P50 P99 BAD < <(awk '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000; if (v ~ /s$/) return v * 1e6; return v }
    $1 == "50%" { p50 = us($2) } $1 == "99%" { p99 = us($2) } $1 == "Requests/sec:" { rps = $2 }
    /Non-2xx or 3xx responses:/ { bad = $NF } /Socket errors:/ { bad = bad "+socket-errors" }
    END { print rps + 0, p50 + 0, p99 + 0, (bad == "" ? 0 : bad) }' "$WORK/wrk.txt")
  NOTE=""
  [ "$BAD" = 0 ] || NOTE=" (bad responses: $BAD)"
  echo "  $(printf '%-11s' "$1") wrk -t$threads -c$conns${4:+ -s $(basename "$4")} $2: rps=$RPS p50=${P50}us p99=${P99}us$NOTE"
}

# A wrk script that POSTs the 300-byte unit of every append row: to context
# bench/c0, or with N > 1 to one of bench/c0 … bench/c(N-1) at random, as
# redis-benchmark -r N picks one of N streams. One context needs no Lua per request.
append_script() {  # contexts → path of the script
  local f="$WORK/append-$1.lua"
  cat >"$f" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local function body(c)
  return '{"context_id":"bench/c' .. c .. '","agent_id":"bench","type":1,"text":"$VALUE"}'
end
wrk.body = body(0)
EOF
  if [ "$1" -gt 1 ]; then
    cat >>"$f" <<EOF
local bodies = {}
for c = 0, $(($1 - 1)) do bodies[c + 1] = body(c) end
function request() return wrk.format(nil, nil, nil, bodies[math.random($1)]) end
EOF
  fi
  echo "$f"
}

fanout() {  # protocol port subscribers rate
  local out
  out=$(timeout "$LIMIT" "$BIN/engram-fanout" --port "$2" latency --protocol "$1" --subscribers "$3" --rate "$4" \
    --seconds "$SECS") || out+=" FAILED (exit $?)"
  echo "  $(printf '%-11s' "$1") $out"
  RPS=$(sed -n 's/.*delivered=[0-9]* (\([0-9.]*\)\/s).*/\1/p' <<<"$out" | head -1)
  P50=$(sed -n 's/.* p50=\([0-9.]*\)us.*/\1/p' <<<"$out" | head -1)
  P99=$(sed -n 's/.* p99=\([0-9.]*\)us.*/\1/p' <<<"$out" | head -1)
  NOTE=""
  if grep -q WARNING <<<"$out"; then NOTE=" (only $(sed -n 's/.*WARNING: \([0-9]* of [0-9]*\).*/\1/p' <<<"$out") delivered)"; fi
  # The publisher waits for each acknowledgement: when they come late, it falls behind its rate.
  local published
  published=$(awk -v d="${RPS:-0}" -v n="$3" 'BEGIN { printf "%.0f", d / n }')
  if [ "$published" -lt $(($4 * 9 / 10)) ]; then NOTE+=" (published only $published/s)"; fi
}

# --- the table ---------------------------------------------------------------------

fmt_rate() { awk -v r="$1" 'BEGIN { if (r >= 1000) printf "%.1fk/s", r / 1000; else printf "%.0f/s", r }'; }
fmt_us() { awk -v u="$1" 'BEGIN { if (u >= 1000) printf "%.1f ms", u / 1000; else printf "%.0f µs", u }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f×", a / b; else printf "n/a" }'; }
throughput() { echo "$(fmt_rate "$RPS"), p50 $(fmt_us "$P50"), p99 $(fmt_us "$P99")$NOTE"; }
latency() { echo "p50 $(fmt_us "$P50"), p99 $(fmt_us "$P99")$NOTE"; }

TABLE=()
row() { TABLE+=("| $1 | $2 | $3 | $4 | $5 |"); }
round_label() { if [ "$ROUNDS" -gt 1 ]; then echo " (round $1)"; fi; }

echo "# Engram and its peers — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "# $(redis-server --version | cut -d' ' -f1-3), nats-server $(nats-server --version | sed 's/.* //'), $(nginx -v 2>&1 | sed 's/.*: //'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); ${SECS}s per run, $ROUNDS round(s)"

# One append row: Engram with wrk (after a 1 s warm-up run), then Redis with
# redis-benchmark (after its calibration run).
#   append_row title durability connections engram-contexts appendfsync peer-title redis-benchmark-args…
append_row() {
  local title=$1 durability=$2 conns=$3 contexts=$4 fsync=$5 peer=$6 e er script
  shift 6
  engram_up "$durability" "$WORK/append"
  script=$(append_script "$contexts")
  SECS=1 wrk_run warm-up "http://127.0.0.1:$ENGRAM_PORT/workunit" "$conns" "$script" >/dev/null
  wrk_run engram "http://127.0.0.1:$ENGRAM_PORT/workunit" "$conns" "$script"
  e="$(throughput)"; er=$RPS; engram_down; rm -rf "$WORK/append"
  redis_up "$fsync" "$WORK/redis"
  redis_bench "$conns" "$@"
  redis_down; rm -rf "$WORK/redis"
  row "$title" "$e" "$peer: $(throughput)" "$(ratio "$er" "$RPS") (req/s)" "wrk / redis-benchmark"
}

if has durable; then
  echo "## durable append: POST /workunit (sync) vs Redis XADD (appendfsync always), 300 B"
  for r in $(seq 1 "$ROUNDS"); do
    append_row "durable append, $CONNS conns, 300 B, one context$(round_label "$r")" sync "$CONNS" 1 always \
      "Redis XADD, appendfsync always" XADD s '*' f "$VALUE"
    append_row "durable append, $CONNS conns, 300 B, $CONNS contexts$(round_label "$r")" sync "$CONNS" "$CONNS" always \
      "Redis XADD to $CONNS streams (random), always" -r "$CONNS" XADD 's:__rand_int__' '*' f "$VALUE"
    append_row "durable append, 1 conn, 300 B$(round_label "$r")" sync 1 1 always \
      "Redis XADD, appendfsync always" XADD s '*' f "$VALUE"
  done
fi

if has relaxed; then
  echo "## relaxed append: POST /workunit (relaxed) vs Redis XADD (appendfsync everysec), 300 B, one context"
  for r in $(seq 1 "$ROUNDS"); do
    append_row "relaxed append, $CONNS conns, 300 B, one context$(round_label "$r")" relaxed "$CONNS" 1 everysec \
      "Redis XADD, appendfsync everysec" XADD s '*' f "$VALUE"
    append_row "relaxed append, 1 conn, 300 B$(round_label "$r")" relaxed 1 1 everysec \
      "Redis XADD, appendfsync everysec" XADD s '*' f "$VALUE"
  done
fi

if has get; then
  echo "## GET /workunit/{id} vs nginx serving the same bytes as a static file (2 workers), $CONNS connections"
  for r in $(seq 1 "$ROUNDS"); do
    engram_up sync "$WORK/get"
    id=$(curl -sf -X POST "http://127.0.0.1:$ENGRAM_PORT/workunit" \
      -d "{\"context_id\":\"bench/get\",\"agent_id\":\"bench\",\"type\":1,\"text\":\"$VALUE\"}" | jq -r .work_unit.id)
    curl -sf "http://127.0.0.1:$ENGRAM_PORT/workunit/$id" >"$WORK/unit.json"
    wrk_run engram "http://127.0.0.1:$ENGRAM_PORT/workunit/$id"
    E="$(throughput)"; ER=$RPS; engram_down; rm -rf "$WORK/get"
    nginx_up "$WORK/unit.json"
    wrk_run nginx "http://127.0.0.1:$NGINX_PORT/unit"
    nginx_down
    row "GET /workunit/{id}, $CONNS conns ($(wc -c <"$WORK/unit.json") B body)$(round_label "$r")" "$E" \
      "nginx static file, 2 workers: $(throughput)" "$(ratio "$ER" "$RPS") (req/s)" "wrk / wrk"
  done
fi

if has last100; then
  echo "## last 100 units of a ${LAST_UNITS}-unit context vs Redis XREVRANGE COUNT 100 of a ${LAST_UNITS}-entry stream, 1 connection"
  # Loaded once; each run is a fresh process on the loaded data (recovered from disk).
  engram_up relaxed "$WORK/last100"
  timeout "$LIMIT" "$BIN/engram-load" seed --port "$ENGRAM_PORT" --connections 2 --units "$LAST_UNITS" \
    --target-units "$LAST_UNITS" --context bench/last100 --payload-bytes 300 | sed 's/^/  engram      /'
  engram_quiet merged
  engram_down
  redis_up everysec "$WORK/redis-last100"
  timeout "$LIMIT" redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c 10 -P 100 -n "$LAST_UNITS" -q \
    XADD last100 '*' f "$VALUE" >/dev/null
  echo "  redis       seeded stream last100: XLEN $(redis-cli -p "$REDIS_PORT" xlen last100)"
  redis_down
  for r in $(seq 1 "$ROUNDS"); do
    engram_up sync "$WORK/last100"
    engram_quiet
    url="http://127.0.0.1:$ENGRAM_PORT/workunits/bench%2Flast100?limit=100&reverse=true"
    SECS=1 wrk_run warm-up "$url" 1 >/dev/null
    wrk_run engram "$url" 1
    E="$(latency)"; EP50=$P50; EP99=$P99; engram_down
    redis_up everysec "$WORK/redis-last100"
    redis_bench 1 XREVRANGE last100 + - COUNT 100
    redis_down
    row "last 100 of a ${LAST_UNITS}-unit context, 1 conn$(round_label "$r")" "$E" \
      "Redis XREVRANGE COUNT 100: $(latency)" "p50 $(ratio "$EP50" "$P50"), p99 $(ratio "$EP99" "$P99")" \
      "wrk / redis-benchmark"
  done
  rm -rf "$WORK/last100" "$WORK/redis-last100"
fi

if has fanout; then
  echo "## fan-out, publish → receive at every subscriber: Engram WebSocket (sync) vs Redis pub/sub vs NATS core"
  for spec in $FANOUT; do
    subs=${spec%%:*} rate=${spec##*:}
    for r in $(seq 1 "$ROUNDS"); do
      engram_up sync "$WORK/fanout"
      fanout engram "$ENGRAM_PORT" "$subs" "$rate"
      E="$(latency)"; EP50=$P50; EP99=$P99; engram_down; rm -rf "$WORK/fanout"
      redis_up no "$WORK/redis"
      fanout redis "$REDIS_PORT" "$subs" "$rate"
      RD="Redis pub/sub: $(latency)"; RR="p50 $(ratio "$EP50" "$P50"), p99 $(ratio "$EP99" "$P99")"
      redis_down; rm -rf "$WORK/redis"
      nats_up
      fanout nats "$NATS_PORT" "$subs" "$rate"
      nats_down
      t="fan-out, $subs subscriber$([ "$subs" = 1 ] || echo s), $rate/s$(round_label "$r")"
      row "$t" "$E" "$RD" "$RR" "engram-fanout (WebSocket / RESP)"
      row "$t" "$E" "NATS: $(latency)" "p50 $(ratio "$EP50" "$P50"), p99 $(ratio "$EP99" "$P99")" \
        "engram-fanout (WebSocket / NATS)"
    done
  done
fi

echo
echo "| test | Engram | peer | Engram ÷ peer | measured with (Engram / peer) |"
echo "|---|---|---|---|---|"
printf '%s\n' "${TABLE[@]}"
echo
echo "Throughput rows: Engram's req/s ÷ the peer's (above 1: Engram faster). Latency rows: Engram's"
echo "percentile ÷ the peer's (above 1: Engram slower). Load tools and servers share this machine's $(nproc) cores."
