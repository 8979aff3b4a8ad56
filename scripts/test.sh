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
