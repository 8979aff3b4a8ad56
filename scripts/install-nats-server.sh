#!/usr/bin/env bash
# Installs nats-server (Debian's package, 2.9.10 on bookworm: the oldest
# server jetway supports) unless one is on PATH or named by NATS_SERVER_BIN.
set -euo pipefail
if [ -n "${NATS_SERVER_BIN:-}" ] && [ -x "$NATS_SERVER_BIN" ]; then exit 0; fi
if command -v nats-server >/dev/null 2>&1; then exit 0; fi
echo "nats-server not found; installing it with apt-get" >&2
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
command -v nats-server >/dev/null
