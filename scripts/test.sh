#!/usr/bin/env bash
# The test command of the README: installs nats-server if missing, then
# format check, clippy and every test (unit, integration against real
# nats-servers, the CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-nats-server.sh
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --lib --bins --tests
# The same end-to-end paths against a current server (2.14).
if latest=$(scripts/nats-server-latest.sh); then
  NATS_SERVER_BIN="$latest" cargo test --locked --test smoke --test publish --test delivery
else
  echo "warning: could not fetch nats-server 2.14; newer-server tests skipped" >&2
fi
