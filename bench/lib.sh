# shellcheck shell=bash disable=SC2034  # ENGRAM_PID and ENGRAM_PORT are for the caller
# What the bench scripts (run.sh, peers.sh, cost.sh) share. Sourced, not run.

# Installs the given Debian packages that are missing (as root, or through sudo).
install_missing() {  # package…
  local missing=() pkg sudo=""
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Starts engram on a free loopback port with the given arguments, logging to a file,
# and waits until /readyz answers. Sets ENGRAM_PID and ENGRAM_PORT; exits the script
# (with the log) if the server does not come up within 60 s.
engram_start() {  # binary log-file engram-arguments…
  : > "$2"
  "$1" --addr 127.0.0.1:0 --log-level info "${@:3}" 2>"$2" &
  ENGRAM_PID=$!
  for _ in $(seq 1 600); do
    ENGRAM_PORT=$(sed -n 's/.*http: listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$2" | head -1)
    if [ -n "$ENGRAM_PORT" ] && curl -sf "http://127.0.0.1:$ENGRAM_PORT/readyz" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "engram did not become ready" >&2; cat "$2" >&2; exit 1
}
