#!/bin/bash
# usage: run_del.sh N  -> profiles jetway delivery and the bare loop, concurrency 16
set -e
OUT=${OUT:-/tmp/jetway-prof}; export OUT; mkdir -p "$OUT"
HERE=$(cd "$(dirname "$0")" && pwd); . "$HERE/common.sh"; cp "$HERE"/*.lua "$HERE"/sink.py "$OUT"/
N=$1
PORT=$(fp); SINKP=$(fp); API=127.0.0.1:$(fp); MET=127.0.0.1:$(fp)
STORE=$(mktemp -d)
nats-server -js -a 127.0.0.1 -p $PORT -sd $STORE >/dev/null 2>&1 & NPID=$!
python3 ${OUT:-/tmp/jetway-prof}/sink.py $SINKP & SPID=$!
sleep 1
cat > ${OUT:-/tmp/jetway-prof}/dcfg.yaml <<YAML
app_id: prof
nats: { url: "nats://127.0.0.1:$PORT" }
api: { listen: "$API" }
metrics: { listen: "$MET" }
streams:
  - { name: DLV, subjects: ["dlv.>"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }
subscriptions:
  - { name: s16, subject: "dlv.j", endpoint: "http://127.0.0.1:$SINKP/d", concurrency: 16, timeout: 10s }
  - { name: b16, subject: "dlv.b", endpoint: "http://127.0.0.1:$SINKP/d", concurrency: 16, timeout: 10s }
YAML
python3 - > ${OUT:-/tmp/jetway-prof}/batch.ndjson <<'PY'
import base64
d=base64.b64encode(b'd'*256).decode()
for s in ['dlv.j','dlv.b']:
    pass
PY
mk() { python3 -c "
import base64,sys
d=base64.b64encode(b'd'*256).decode()
sys.stdout.write(''.join('{\"subject\":\"$1\",\"data_base64\":\"%s\"}\n'%d for _ in range(100)))" > ${OUT:-/tmp/jetway-prof}/batch.$1; }
mk dlv.j; mk dlv.b
valgrind --tool=callgrind --callgrind-out-file=${OUT:-/tmp/jetway-prof}/cg.jdel --dump-instr=no ${JETWAY_BIN:-/work/target-bench/release/jetway} run --config ${OUT:-/tmp/jetway-prof}/dcfg.yaml 2>${OUT:-/tmp/jetway-prof}/vg.jdel.log & VPID=$!
until curl -sf http://$MET/readyz >/dev/null; do sleep 0.5; kill -0 $VPID || exit 1; done
curl -sf -XPOST http://$API/v1/subscriptions/s16/pause >/dev/null
curl -sf -XPOST http://$API/v1/subscriptions/b16/pause >/dev/null
sleep 3
for i in $(seq 1 $((N/100))); do
  curl -sf -XPOST -H 'content-type: application/x-ndjson' --data-binary @${OUT:-/tmp/jetway-prof}/batch.dlv.j http://$API/v1/publish >/dev/null
  curl -sf -XPOST -H 'content-type: application/x-ndjson' --data-binary @${OUT:-/tmp/jetway-prof}/batch.dlv.b http://$API/v1/publish >/dev/null
done
sleep 1
callgrind_control -z $VPID >/dev/null
T0=$(date +%s.%N)
curl -sf -XPOST http://$API/v1/subscriptions/s16/resume >/dev/null
until [ "$(curl -sf http://127.0.0.1:$SINKP/count)" -ge "$N" ]; do sleep 0.2; done
T1=$(date +%s.%N)
callgrind_control -d $VPID >/dev/null
echo "jetway delivered $N in $(echo "$T1 - $T0" | bc) s (under callgrind)"
kill -TERM $VPID; wait $VPID || true
# the bare loop on consumer prof-b16 (created by jetway above)
BEXE=${BENCH_EXE:?set BENCH_EXE to the bench binary that cargo bench --bench jetway --no-run prints}
mkfifo ${OUT:-/tmp/jetway-prof}/go.$$ 
valgrind --tool=callgrind --callgrind-out-file=${OUT:-/tmp/jetway-prof}/cg.bdel --dump-instr=no $BEXE __role bare-deliver nats://127.0.0.1:$PORT DLV prof-b16 http://127.0.0.1:$SINKP/d 16 < ${OUT:-/tmp/jetway-prof}/go.$$ > ${OUT:-/tmp/jetway-prof}/bdel.out 2>${OUT:-/tmp/jetway-prof}/vg.bdel.log & BPID=$!
exec 7>${OUT:-/tmp/jetway-prof}/go.$$
until grep -q ready ${OUT:-/tmp/jetway-prof}/bdel.out 2>/dev/null; do sleep 0.5; kill -0 $BPID || exit 1; done
callgrind_control -z $BPID >/dev/null
T0=$(date +%s.%N)
echo go >&7
until [ "$(curl -sf http://127.0.0.1:$SINKP/count)" -ge "$((2*N))" ]; do sleep 0.2; done
T1=$(date +%s.%N)
callgrind_control -d $BPID >/dev/null
echo "bare loop delivered $N in $(echo "$T1 - $T0" | bc) s (under callgrind)"
kill $BPID; exec 7>&-; rm -f ${OUT:-/tmp/jetway-prof}/go.$$
kill $NPID $SPID; rm -rf $STORE
