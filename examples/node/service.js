// A small order service beside a jetway sidecar.
//
// POST /orders {"id": "1001", ...} places an order: it is published to
// orders.created through jetway with the order id as Idempotency-Key, so a
// client that retries the call stores the event once. jetway delivers every
// orders.created event to POST /events/order-created, signed with Standard
// Webhooks; the handler verifies the signature, drops repeats by
// Idempotency-Key and answers 2xx. GET /stats tells run.sh what happened.
//
// To show a retry, the first delivery is processed and then answered 503,
// as if the service had crashed before its answer got out; jetway sends it
// again (same Idempotency-Key) and the handler recognises the repeat.
"use strict";

const http = require("node:http");
const { Webhook, WebhookVerificationError } = require("standardwebhooks");

const JETWAY = process.env.JETWAY_URL || "http://127.0.0.1:4480";
const PORT = Number(process.env.PORT || 8080);
const webhook = new Webhook(process.env.WEBHOOK_SECRET);

// Idempotency-Key -> order. In production: a table with a unique key,
// written in the same transaction as the order's side effects.
const processed = new Map();
const stats = { deliveries: 0, duplicates: 0, forged: 0, published: 0, publish_duplicates: 0 };
const attempts = [];
let crashOnce = true;

// Publishes an order event; jetway answers only after JetStream's PubAck.
async function publish(order) {
  const response = await fetch(`${JETWAY}/v1/publish/orders.created`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "Idempotency-Key": `order-${order.id}` },
    body: JSON.stringify(order),
    signal: AbortSignal.timeout(10_000),
  });
  if (!response.ok) {
    throw new Error(`jetway answered ${response.status}: ${await response.text()}`);
  }
  return response.json();
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => resolve(Buffer.concat(chunks)));
    req.on("error", reject);
  });
}

function answer(res, status, body) {
  res.writeHead(status, { "Content-Type": "text/plain" });
  res.end(body);
}

async function placeOrder(req, res) {
  const order = JSON.parse((await readBody(req)).toString());
  let result;
  try {
    result = await publish(order);
  } catch (e) {
    // Not stored (or unknown): the client retries; the Idempotency-Key makes that safe.
    return answer(res, 503, `publish failed: ${e.message}\n`);
  }
  stats.published += 1;
  stats.publish_duplicates += result.duplicate ? 1 : 0;
  answer(res, 200, JSON.stringify(result) + "\n");
}

async function orderCreated(req, res) {
  const payload = await readBody(req);
  let order;
  try {
    // The raw body, exactly as received: the signature covers its bytes.
    order = webhook.verify(payload, req.headers);
  } catch (e) {
    if (!(e instanceof WebhookVerificationError)) throw e;
    stats.forged += 1;
    return answer(res, 401, "bad signature\n");
  }
  const key = req.headers["idempotency-key"];
  stats.deliveries += 1;
  attempts.push(req.headers["jetway-attempt"] || "?");
  if (processed.has(key)) {
    stats.duplicates += 1;
    return answer(res, 200, "repeat dropped\n");
  }
  processed.set(key, order);
  if (crashOnce) {
    crashOnce = false;
    return answer(res, 503, "processed, but crashing before the answer\n");
  }
  answer(res, 200, "ok\n");
}

function statsText() {
  const lines = [`processed=${[...processed.keys()].sort().join(",")}`];
  for (const [k, v] of Object.entries(stats)) lines.push(`${k}=${v}`);
  lines.push(`attempts=${attempts.join(",")}`);
  return lines.join("\n") + "\n";
}

const server = http.createServer((req, res) => {
  const route = `${req.method} ${req.url}`;
  const handle =
    route === "POST /orders"
      ? placeOrder(req, res)
      : route === "POST /events/order-created"
        ? orderCreated(req, res)
        : route === "GET /stats"
          ? Promise.resolve(answer(res, 200, statsText()))
          : Promise.resolve(answer(res, 404, "not found\n"));
  handle.catch((e) => {
    console.error(`service: ${route}: ${e.stack || e}`);
    if (!res.headersSent) answer(res, 500, "internal error\n");
  });
});

server.listen(PORT, "127.0.0.1");
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => server.close(() => process.exit(0)));
