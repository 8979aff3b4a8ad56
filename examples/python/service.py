"""A small order service beside a jetway sidecar.

POST /orders {"id": "1001", ...} places an order: it is published to
orders.created through jetway with the order id as Idempotency-Key, so a
client that retries the call stores the event once. jetway delivers every
orders.created event to POST /events/order-created, signed with Standard
Webhooks; the handler verifies the signature, drops repeats by
Idempotency-Key and answers 2xx. GET /stats tells run.sh what happened.

To show a retry, the first delivery is processed and then answered 503, as
if the service had crashed before its answer got out; jetway sends it again
(same Idempotency-Key) and the handler recognises the repeat.
"""

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks import Webhook, WebhookVerificationError

JETWAY = os.environ.get("JETWAY_URL", "http://127.0.0.1:4480")
PORT = int(os.environ.get("PORT", "8080"))
webhook = Webhook(os.environ["WEBHOOK_SECRET"])

lock = threading.Lock()
# Idempotency-Key -> order. In production: a table with a unique key,
# written in the same transaction as the order's side effects.
processed = {}
stats = {"deliveries": 0, "duplicates": 0, "forged": 0, "attempts": [], "published": 0, "publish_duplicates": 0}
crash_once = True


def publish(order):
    """Publishes an order event; returns jetway's answer (stored only after PubAck)."""
    request = urllib.request.Request(
        f"{JETWAY}/v1/publish/orders.created",
        data=json.dumps(order).encode(),
        headers={"Content-Type": "application/json", "Idempotency-Key": f"order-{order['id']}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        sys.stderr.write("service: " + fmt % args + "\n")

    def answer(self, status, body):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_GET(self):
        if self.path != "/stats":
            return self.answer(404, "not found\n")
        with lock:
            lines = [f"processed={','.join(sorted(processed))}"]
            lines += [f"{k}={v}" for k, v in stats.items() if k != "attempts"]
            lines.append("attempts=" + ",".join(stats["attempts"]))
        self.answer(200, "\n".join(lines) + "\n")

    def do_POST(self):
        if self.path == "/orders":
            return self.place_order()
        if self.path == "/events/order-created":
            return self.order_created()
        self.answer(404, "not found\n")

    def place_order(self):
        order = json.loads(self.body())
        try:
            result = publish(order)
        except urllib.error.URLError as e:
            # Not stored (or unknown): tell the client to retry; the
            # Idempotency-Key makes the retry safe.
            return self.answer(503, f"publish failed: {e}\n")
        with lock:
            stats["published"] += 1
            stats["publish_duplicates"] += int(result["duplicate"])
        self.answer(200, json.dumps(result) + "\n")

    def order_created(self):
        global crash_once
        payload = self.body()
        try:
            order = webhook.verify(payload, dict(self.headers.items()))
        except WebhookVerificationError:
            with lock:
                stats["forged"] += 1
            return self.answer(401, "bad signature\n")
        key = self.headers["Idempotency-Key"]
        with lock:
            stats["deliveries"] += 1
            stats["attempts"].append(self.headers.get("Jetway-Attempt", "?"))
            if key in processed:
                stats["duplicates"] += 1
                return self.answer(200, "repeat dropped\n")
            processed[key] = order
            if crash_once:
                crash_once = False
                return self.answer(503, "processed, but crashing before the answer\n")
        self.answer(200, "ok\n")


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
