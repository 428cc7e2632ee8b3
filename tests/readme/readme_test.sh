#!/usr/bin/env bash
# Runs every ```sh block of README.md, in order, in one shell, against a fresh real
# server, as a new user pasting them would. A block is skipped only when the line
# before it says `<!-- readme-test: skip (reason) -->` (second terminal, root, Docker,
# make); each skip is printed with its reason. curl fails on any HTTP error and every
# command must succeed (set -euo pipefail). localhost:8080 in the README becomes the
# test server's ephemeral port.
#
#   tests/readme/readme_test.sh <README.md> <bin dir with engram and engramctl>
set -euo pipefail

readme=$1
bin=$(cd "$2" && pwd)
work=$(mktemp -d /tmp/engram-readme-XXXXXX)
server_pid=
cleanup() {
  if [[ -n $server_pid ]]; then
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

for tool in curl jq; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (make deps installs it)"; exit 1; }
done

# The server on an ephemeral port; its start-up line names the port. The log exists
# before the server does: the background job's redirection may come after the first
# sed below.
: >"$work/server.log"
"$bin/engram" --addr 127.0.0.1:0 --data-dir "$work/data" 2>"$work/server.log" &
server_pid=$!
port=
for _ in $(seq 1 300); do  # 30 s
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/server.log" | head -n1)
  if [[ -n $port ]] && curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; then break; fi
  port=
  sleep 0.1
done
[[ -n $port ]] || { echo "FAIL: the server did not become ready"; cat "$work/server.log"; exit 1; }

# Blocks into one script: each announces itself on stderr before it runs.
awk -v port="$port" '
  /^<!-- readme-test: skip/ { skip = $0; next }
  /^```sh$/ { n++; inside = 1
              if (skip != "") { sub(/^<!-- readme-test: /, "", skip); sub(/ -->$/, "", skip)
                                printf "printf \"\\\\n--- block %d (README line %d): %s\\\\n\" >&2\n", n, NR, skip; skipping = 1 }
              else { printf "printf \"\\\\n--- block %d (README line %d): running\\\\n\" >&2\n", n, NR; skipping = 0 }
              skip = ""; next }
  /^```/ { inside = 0; skipping = 0; next }
  inside && !skipping { gsub(/localhost:8080|127\.0\.0\.1:8080/, "127.0.0.1:" port); print; next }
  { if ($0 !~ /^[[:space:]]*$/) skip = "" }
' "$readme" >"$work/blocks.sh"

ran=$(grep -c ': running' "$work/blocks.sh" || true)
[[ $ran -gt 0 ]] || { echo "FAIL: no runnable sh blocks found in $readme"; exit 1; }

cat >"$work/run.sh" <<PRELUDE
set -euo pipefail
export PATH="$bin:\$PATH"
unset ENGRAM_TOKEN ENGRAM_CONFIG
cd "$work"
# A pasted curl that gets an HTTP error must fail the test, as it would puzzle a user.
curl() { command curl --fail-with-body --max-time 30 "\$@"; }
PRELUDE
cat "$work/blocks.sh" >>"$work/run.sh"

if ! bash "$work/run.sh" >"$work/out.log" 2>&1; then
  echo "FAIL: a README command failed; output up to the failure:"
  cat "$work/out.log"
  echo "--- server log"
  tail -n 50 "$work/server.log"
  exit 1
fi
grep '^--- block' "$work/out.log"
echo "PASS: $ran README shell blocks ran as pasted against a fresh server"
