#!/usr/bin/env bash
# The run command of the README: installs nats-server if missing, then
# `jetway dev` (a throwaway nats-server, the sidecar and an echo endpoint).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-nats-server.sh
exec cargo run --release --locked -- dev "$@"
