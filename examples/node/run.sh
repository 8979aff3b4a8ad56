#!/usr/bin/env bash
# Runs the Node order service end to end: a nats-server and a jetway
# sidecar (with ./jetway.yaml) on free loopback ports, the service, two
# identical order requests, and checks that the event was stored once,
# delivered with a valid Standard Webhooks signature, retried after the
# service's first 503, and that the repeat was dropped by Idempotency-Key.
# Exits 0 only if all of that happened; stops everything it started.
#   JETWAY_BIN       the jetway binary (default: cargo build --bin jetway)
#   NATS_SERVER_BIN  nats-server (default: the one on PATH)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
name=examples/node
work=$(mktemp -d)
pids=()

cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    for log in "$work"/*.log; do [ -f "$log" ] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }; done
    echo "$name: FAILED" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "$name: $*" >&2; exit 1; }

# free_port VAR: sets VAR to a port nothing listens on (bash only). Ports
# come from below the kernel's range for outgoing connections (32768 and
# up by default), so no client's connection can take one before it is
# bound, and each call looks from after the last port it gave, so two calls
# never give the same one.
next_port=$((20000 + RANDOM % 12000))
free_port() {
  while (echo >"/dev/tcp/127.0.0.1/$next_port") 2>/dev/null; do
    next_port=$((next_port + 1))
  done
  printf -v "$1" '%s' "$next_port"
  next_port=$((next_port + 1))
}

# wait_until SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
wait_until() {
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}

stat() { curl -fsS "http://127.0.0.1:$SERVICE_PORT/stats" | sed -n "s/^$1=//p"; }

# --- what this example needs
command -v node >/dev/null && command -v npm >/dev/null || fail "node and npm are missing (apt-get install nodejs npm)"
# Exactly the committed lockfile's versions and hashes.
(cd "$here" && npm ci --silent --no-audit --no-fund)

[ -n "${NATS_SERVER_BIN:-}" ] || "$repo/scripts/install-nats-server.sh"
nats_bin=${NATS_SERVER_BIN:-$(command -v nats-server || true)}
[ -x "$nats_bin" ] || fail "nats-server not found (scripts/install-nats-server.sh, or set NATS_SERVER_BIN)"
if [ -z "${JETWAY_BIN:-}" ]; then
  (cd "$repo" && cargo build --quiet --bin jetway)
  JETWAY_BIN="${CARGO_TARGET_DIR:-$repo/target}/debug/jetway"
fi
[ -x "$JETWAY_BIN" ] || fail "jetway binary not found at $JETWAY_BIN"

# --- start everything on free ports
free_port NATS_PORT
export NATS_URL="nats://127.0.0.1:$NATS_PORT"
free_port JETWAY_API_PORT; free_port JETWAY_METRICS_PORT; free_port SERVICE_PORT
export JETWAY_API_PORT JETWAY_METRICS_PORT SERVICE_PORT
export WEBHOOK_SECRET="whsec_$(head -c 24 /dev/urandom | base64)"
export JETWAY_URL="http://127.0.0.1:$JETWAY_API_PORT"

"$nats_bin" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
wait_until 10 "nats-server on $NATS_PORT" grep -q "Server is ready" "$work/nats.log"

PORT=$SERVICE_PORT node "$here/service.js" >"$work/service.log" 2>&1 &
pids+=($!)
wait_until 10 "the service on $SERVICE_PORT" curl -fs "http://127.0.0.1:$SERVICE_PORT/stats"

"$JETWAY_BIN" run --config "$here/jetway.yaml" >"$work/jetway.log" 2>&1 &
jetway_pid=$!
pids+=($jetway_pid)
jetway_ready() {
  kill -0 "$jetway_pid" 2>/dev/null || fail "jetway exited (see its log)"
  curl -fs "http://127.0.0.1:$JETWAY_METRICS_PORT/readyz"
}
wait_until 30 "jetway ready" jetway_ready

# --- the scenario
order='{"id":"1001","item":"book","quantity":1}'
# The client retries its call (a timeout on its side, say): the same order
# twice. jetway stores it once (Idempotency-Key = order id).
curl -fsS -X POST -H 'Content-Type: application/json' -d "$order" "http://127.0.0.1:$SERVICE_PORT/orders" >/dev/null
curl -fsS -X POST -H 'Content-Type: application/json' -d "$order" "http://127.0.0.1:$SERVICE_PORT/orders" >/dev/null
# A forged delivery (wrong signature) must be refused.
forged=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
  -H 'webhook-id: forged-1' -H "webhook-timestamp: $(date +%s)" -H 'webhook-signature: v1,Zm9yZ2VkIHNpZ25hdHVyZQ==' \
  -H 'Idempotency-Key: forged-1' -d "$order" "http://127.0.0.1:$SERVICE_PORT/events/order-created")
[ "$forged" = 401 ] || fail "a forged delivery got $forged, not 401"

# The first delivery is answered 503 after processing; the retry is a repeat.
wait_until 30 "the retried delivery to be dropped as a repeat" \
  bash -c "curl -fs http://127.0.0.1:$SERVICE_PORT/stats | grep -qx 'duplicates=[1-9][0-9]*'"

# --- the checks
[ "$(stat processed)" = "order-1001" ] || fail "processed: $(stat processed), want order-1001 once"
[ "$(stat publish_duplicates)" = 1 ] || fail "the second publish was not recognised as a duplicate"
[ "$(stat forged)" = 1 ] || fail "forged deliveries counted: $(stat forged)"
deliveries=$(stat deliveries) duplicates=$(stat duplicates) attempts=$(stat attempts)
[ "$duplicates" -eq $((deliveries - 1)) ] || fail "$deliveries deliveries, $duplicates repeats dropped"
case "$attempts" in 1,2*) ;; *) fail "attempts $attempts, want 1 then 2 (a retry after the 503)" ;; esac
metrics=$(curl -fsS "http://127.0.0.1:$JETWAY_METRICS_PORT/metrics")
grep -q '^jetway_deliveries_total{.*outcome="retry".*} [1-9]' <<<"$metrics" || fail "jetway counted no retry"
grep -q '^jetway_deliveries_total{.*outcome="success".*} [1-9]' <<<"$metrics" || fail "jetway counted no success"

echo "$name: ok (stored once, signature verified, retried after 503, $duplicates repeat dropped, forged delivery refused)"
