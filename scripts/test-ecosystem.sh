#!/usr/bin/env bash
# The ecosystem checks: the monitoring artefacts through the real tools
# (promtool check rules / test rules), and the example services in Python,
# Node and Go, each run end to end against a real nats-server and jetway.
# Installs what it needs: Debian's prometheus (brings promtool, and the
# prometheus binary tests/prometheus.rs starts), golang-go when go is
# missing; each example's run.sh makes its own venv / npm ci.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "test-ecosystem: $* missing and not root: install them (apt-get install $*)" >&2
    exit 1
  fi
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}
need=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v go >/dev/null || need+=(golang-go)
scripts/install-nats-server.sh
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

echo "== promtool check rules"
# alerts.yaml is a PrometheusRule: promtool reads its spec (the same rule
# groups, two spaces further in).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
spec="$tmp/deploy-prometheus-alerts.yaml.spec"
awk 'found { sub(/^  /, ""); print } /^spec:/ { found = 1 }' deploy/prometheus/alerts.yaml >"$spec"
promtool check rules "$spec" helm/jetway/files/rules.yaml
echo "== promtool test rules"
promtool test rules deploy/prometheus/alerts.test.yaml

echo "== examples"
cargo build --locked --bin jetway
export JETWAY_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/jetway"
passed=0 failed=0
for example in python node go; do
  echo "-- examples/$example"
  if examples/"$example"/run.sh; then
    passed=$((passed + 1))
  else
    echo "examples/$example FAILED" >&2
    failed=$((failed + 1))
  fi
done
echo "examples: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
