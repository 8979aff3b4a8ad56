# Sourced by the profiling scripts: what each of them sets up the same way.

# A free TCP port on 127.0.0.1.
fp() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# bench_cfg FILE NATS_PORT API METRICS: a sidecar config with the BENCH
# stream (pub.>) and nothing else.
bench_cfg() {
  cat > "$1" <<YAML
app_id: prof
nats: { url: "nats://127.0.0.1:$2" }
api: { listen: "$3" }
metrics: { listen: "$4" }
streams:
  - { name: BENCH, subjects: ["pub.>"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }
YAML
}

# batch_body FILE: 100 NDJSON items as data_base64 on pub.b, each of
# $ITEM_BYTES bytes (16 KiB unless set): what postbatch.lua sends, from
# $OUT/batch.ndjson.
batch_body() {
  ITEM_BYTES=${ITEM_BYTES:-16384} python3 - > "$1" <<'PY'
import base64, os, sys
d = base64.b64encode(b'b' * int(os.environ["ITEM_BYTES"])).decode()
sys.stdout.write(''.join('{"subject":"pub.b","data_base64":"%s"}\n' % d for _ in range(100)))
PY
}
