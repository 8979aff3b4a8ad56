#!/bin/bash
# usage: perf_batch.sh JETWAY_BIN [CONNS]: cpu-clock samples (perf record -g) of jetway under
# 100 x 16 KiB NDJSON batches for 6 s into /tmp/perf.data; then perf report -i /tmp/perf.data --no-children --sort sym
BIN=$1; C=${2:-1}
OUT=$(mktemp -d); export OUT
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/common.sh"
batch_body "$OUT/batch.ndjson"
cp "$HERE/postbatch.lua" "$OUT"/
PORT=$(fp); API=127.0.0.1:$(fp); MET=127.0.0.1:$(fp)
bench_cfg $OUT/cfg.yaml $PORT $API $MET
STORE=$(mktemp -d)
nats-server -js -a 127.0.0.1 -p $PORT -sd $STORE >/dev/null 2>&1 & NPID=$!
sleep 1
$BIN run --config $OUT/cfg.yaml 2>/dev/null & JP=$!
until curl -sf http://$MET/readyz >/dev/null; do sleep 0.2; done
wrk -t1 -c$C -d2s -s $OUT/postbatch.lua http://$API/v1/publish >/dev/null
perf record -F 4999 -e cpu-clock -g -p $JP -o /tmp/perf.data -- sleep 6 >/dev/null 2>&1 &
PP=$!
wrk -t1 -c$C -d6s -s $OUT/postbatch.lua http://$API/v1/publish | grep "requests in"
wait $PP
kill -TERM $JP; wait $JP 2>/dev/null; kill $NPID; wait 2>/dev/null; rm -rf $STORE $OUT
