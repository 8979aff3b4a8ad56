#!/bin/bash
# usage: cpu_batch.sh CONNS BIN...: batches/s and CPU ms per batch (100 x 16 KiB or ITEM_BYTES, NDJSON,
# data_base64) of each jetway binary under wrk, alternated 3 times, each on a fresh nats-server.
# SINGLE=1: single publishes of PAYLOAD bytes (256 unless set) instead, as publishes/s and CPU s per 10k.
# A BIN may be a wrapper script that sets the environment and execs jetway (the PID is the same).
C=$1; shift
if [ -n "$SINGLE" ]; then LUA=post.lua; TARGET=/v1/publish/pub.x; UNIT="publishes/s"; PER=10000; CPU="s CPU per 10k"
else LUA=postbatch.lua; TARGET=/v1/publish; UNIT="batches/s"; PER=1000; CPU="ms CPU per batch"; fi
OUT=$(mktemp -d); export OUT
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/common.sh"
[ -n "$SINGLE" ] || batch_body "$OUT/batch.ndjson"
cp "$HERE/$LUA" "$OUT"/
PORT=$(fp)
API=127.0.0.1:$(fp); MET=127.0.0.1:$(fp)
bench_cfg $OUT/cfg.yaml $PORT $API $MET
for round in 1 2 3; do
 for BIN in "$@"; do
  STORE=$(mktemp -d)
  nats-server -js -a 127.0.0.1 -p $PORT -sd $STORE >/dev/null 2>&1 & NPID=$!
  sleep 1
  $BIN run --config $OUT/cfg.yaml 2>$OUT/jw.err & JP=$!
  until curl -sf http://$MET/readyz >/dev/null; do sleep 0.2; kill -0 $JP 2>/dev/null || { cat $OUT/jw.err; exit 1; }; done
  wrk -t1 -c$C -d2s -s $OUT/$LUA http://$API$TARGET >/dev/null
  T0=$(awk '{print $14+$15}' /proc/$JP/stat)
  wrk -t1 -c$C -d8s -s $OUT/$LUA http://$API$TARGET > $OUT/wrk.txt
  T1=$(awk '{print $14+$15}' /proc/$JP/stat)
  N=$(grep "requests in" $OUT/wrk.txt | awk '{print $1}')
  python3 -c "import os;t=os.sysconf('SC_CLK_TCK');print(f'$(basename $BIN) c$C: {$N/8:.0f} $UNIT, {($T1-$T0)/t*$PER/$N:.3f} $CPU')"
  kill -TERM $JP; wait $JP 2>/dev/null
  kill $NPID; wait $NPID 2>/dev/null; rm -rf $STORE
 done
done
rm -rf $OUT
