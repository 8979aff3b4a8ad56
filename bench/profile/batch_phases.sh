#!/bin/bash
# usage: batch_phases.sh [CONNS]: where the wall time of a 100 x 16 KiB
# NDJSON batch goes, phase by phase. Builds jetway from the working tree
# with batch_phases.patch applied (timestamps around reading the body,
# parsing it and publishing its items, one stderr line per batch) in a
# scratch copy under $OUT, runs wrk against it on a fresh nats-server for
# 8 s after 2 s of warm-up, and prints each phase's mean and median in µs.
# The build goes to a target directory of its own ($PHASES_TARGET_DIR,
# default target/phases under the tree; the first build there compiles
# every dependency), so the tree's own target/release/jetway stays the
# uninstrumented one.
set -e
OUT=${OUT:-/tmp/jetway-phases}; export OUT; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/common.sh"
ROOT=$(cd "$HERE/../.." && pwd)
C=${1:-1}
batch_body "$OUT/batch.ndjson"; cp "$HERE/postbatch.lua" "$OUT"/
rm -rf "$OUT/src-copy"; mkdir -p "$OUT/src-copy"
(cd "$ROOT" && git ls-files -z | xargs -0 cp --parents -t "$OUT/src-copy")
(cd "$OUT/src-copy" && patch -p1 -s < "$HERE/batch_phases.patch")
TARGET=${PHASES_TARGET_DIR:-$ROOT/target/phases}
(cd "$OUT/src-copy" && CARGO_TARGET_DIR=$TARGET cargo build --release --bin jetway 2>&1 | tail -1)
BIN=$OUT/jetway-phases; cp "$TARGET/release/jetway" "$BIN"
PORT=$(fp); STORE=$(mktemp -d)
nats-server -js -a 127.0.0.1 -p $PORT -sd $STORE >/dev/null 2>&1 & NPID=$!
sleep 1
API=127.0.0.1:$(fp); MET=127.0.0.1:$(fp)
bench_cfg "$OUT/cfg.yaml" $PORT $API $MET
$BIN run --config "$OUT/cfg.yaml" 2>"$OUT/phases.log" & JP=$!
until curl -sf http://$MET/readyz >/dev/null; do sleep 0.2; kill -0 $JP; done
wrk -t1 -c$C -d2s -s "$OUT/postbatch.lua" http://$API/v1/publish >/dev/null
: > "$OUT/phases.log"
wrk -t1 -c$C -d8s -s "$OUT/postbatch.lua" http://$API/v1/publish | grep -E "Latency|Requests/sec"
kill -TERM $JP; wait $JP || true
kill $NPID; rm -rf $STORE
python3 - "$OUT/phases.log" <<'PY'
import re, sys, collections
seen = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith("jetway-phases"):
        for key, value in re.findall(r"(\w+)=(\d+)", line):
            seen[key].append(int(value))
for key, values in seen.items():
    values.sort()
    print(f"{key:>16}: mean {sum(values) / len(values):8.0f}  median {values[len(values) // 2]:8d}  ({len(values)} batches)")
PY
