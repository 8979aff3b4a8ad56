#!/bin/bash
# usage: [ITEM_BYTES=N] run_batch.sh jetway|bridge CONNS   (100 x 16 KiB NDJSON items per request, or N bytes each)
set -e
OUT=${OUT:-/tmp/jetway-prof}; export OUT; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/common.sh"; cp "$HERE"/*.lua "$HERE"/sink.py "$OUT"/
batch_body "$OUT/batch.ndjson"
WHAT=$1; C=$2
PORT=$(fp)
STORE=$(mktemp -d)
nats-server -js -a 127.0.0.1 -p $PORT -sd $STORE >/dev/null 2>&1 &
NPID=$!
sleep 1
API=127.0.0.1:$(fp); MET=127.0.0.1:$(fp)
bench_cfg ${OUT:-/tmp/jetway-prof}/cfg.yaml $PORT $API $MET
if [ $WHAT = jetway ]; then
  valgrind --tool=callgrind --callgrind-out-file=${OUT:-/tmp/jetway-prof}/cg.batch.$WHAT.$C ${JETWAY_BIN:-/work/target-bench/release/jetway} run --config ${OUT:-/tmp/jetway-prof}/cfg.yaml 2>${OUT:-/tmp/jetway-prof}/vg.$WHAT.log &
  VPID=$!
  until curl -sf http://$MET/readyz >/dev/null; do sleep 0.5; kill -0 $VPID || exit 1; done
  URL=http://$API/v1/publish
else
  # create the stream via jetway-less path: start jetway quickly to provision, then stop it
  ${JETWAY_BIN:-/work/target-bench/release/jetway} run --config ${OUT:-/tmp/jetway-prof}/cfg.yaml 2>/dev/null & JP=$!
  until curl -sf http://$MET/readyz >/dev/null; do sleep 0.2; done
  kill -TERM $JP; wait $JP || true
  valgrind --tool=callgrind --callgrind-out-file=${OUT:-/tmp/jetway-prof}/cg.batch.$WHAT.$C ${BENCH_EXE:?set BENCH_EXE to the bench binary that cargo bench --bench jetway --no-run prints} __role bare-bridge nats://127.0.0.1:$PORT > ${OUT:-/tmp/jetway-prof}/bridge.addr 2>${OUT:-/tmp/jetway-prof}/vg.$WHAT.log &
  VPID=$!
  until grep -q ":" ${OUT:-/tmp/jetway-prof}/bridge.addr 2>/dev/null; do sleep 0.5; done
  URL=http://$(head -1 ${OUT:-/tmp/jetway-prof}/bridge.addr)/v1/publish
fi
sleep 2
# warm up, then collect
wrk -t1 -c$C -d3s -s ${OUT:-/tmp/jetway-prof}/postbatch.lua $URL >/dev/null
callgrind_control -z $VPID >/dev/null
wrk -t1 -c$C -d30s -s ${OUT:-/tmp/jetway-prof}/postbatch.lua $URL > ${OUT:-/tmp/jetway-prof}/wrk.batch.$WHAT.$C.txt
callgrind_control -d $VPID >/dev/null
kill -TERM $VPID; wait $VPID || true
kill $NPID; rm -rf $STORE
grep -E "requests in|Requests/sec|Non-2xx" ${OUT:-/tmp/jetway-prof}/wrk.batch.$WHAT.$C.txt
