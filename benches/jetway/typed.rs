//! `typed` (issue 12): single publish of a 1 KiB event validated against a
//! 20-property JSON Schema, against the untyped publish of the same body to
//! the same sidecar, in the same run. The sidecar is one of this phase's
//! own (its config has a `schemas` section, the main one's has none); the
//! schema goes in through `POST /v1/schemas/{type}/versions` like any
//! app's would. Runs alternate, the first of each round switching (typed
//! first in even rounds), so drift does not bias the ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;
use serde::Serialize;
use serde_json::json;

use crate::load::{self, MakeRequest, Stop};
use crate::report::{row, size, target, Acc, Target};
use crate::sidecar::Sidecar;
use crate::{Bench, Ctx, Res};

const EVENT_TYPE: &str = "bench.order";
const PAYLOAD: usize = 1024;
const CONNS: usize = 16;
const STREAM: &str = "TYPED";
const SUBJECT: &str = "typed.orders";

#[derive(Serialize)]
pub struct TypedResult {
    pub payload: usize,
    pub conns: usize,
    pub schema_properties: usize,
    pub rounds: usize,
    pub typed: f64,
    pub untyped: f64,
    /// typed / untyped
    pub ratio: f64,
    pub typed_p50_us: f64,
    pub untyped_p50_us: f64,
    pub typed_cpu_s_per_10k: f64,
    pub untyped_cpu_s_per_10k: f64,
    /// Typed publishes answered 200 (warm-up included).
    pub typed_published: u64,
    /// `jetway_schema_validations_total{type,outcome="valid"}` at the end:
    /// proof that every typed publish was validated.
    pub validated: f64,
}

impl TypedResult {
    fn name(&self) -> String {
        format!(
            "typed / untyped single publish ({}-property schema), {} x {} conns",
            self.schema_properties,
            size(self.payload),
            self.conns
        )
    }

    pub fn targets(&self) -> Vec<Target> {
        vec![target(
            format!("{} (issue 12)", self.name()),
            self.ratio,
            0.9,
            "min",
            "x",
        )]
    }

    pub fn checks(&self) -> Vec<Target> {
        vec![target(
            "typed publishes validated (schema metric / typed 200s, issue 12)".into(),
            self.validated / (self.typed_published.max(1) as f64),
            1.0,
            "min",
            "x",
        )]
    }

    pub fn rows(&self, s: &mut String) {
        row(
            s,
            &format!(
                "typed single publish ({}-property schema, validated), {} x {} conns",
                self.schema_properties,
                size(self.payload),
                self.conns
            ),
            &format!("{:.0}/s", self.typed),
            &format!("untyped, same body and sidecar {:.0}/s", self.untyped),
            Some(self.ratio),
            ">= 0.9",
            Some(self.ratio >= 0.9),
        );
        row(
            s,
            "CPU s per 10k typed publishes (info)",
            &format!("{:.3}", self.typed_cpu_s_per_10k),
            &format!("untyped {:.3}", self.untyped_cpu_s_per_10k),
            (self.untyped_cpu_s_per_10k > 0.0)
                .then(|| self.typed_cpu_s_per_10k / self.untyped_cpu_s_per_10k),
            "(info)",
            None,
        );
    }
}

/// 20 properties of the kinds an order event has: constrained strings
/// (pattern, length, enum), bounded numbers, booleans, a nested object and
/// an array of objects; closed, all required.
fn schema() -> serde_json::Value {
    let properties = json!({
        "order_id": { "type": "string", "pattern": "^ord-[0-9]{8}$" },
        "customer_id": { "type": "string", "minLength": 8, "maxLength": 64 },
        "status": { "enum": ["created", "paid", "shipped", "cancelled"] },
        "currency": { "type": "string", "enum": ["EUR", "USD", "GBP", "CHF"] },
        "total_cents": { "type": "integer", "minimum": 0 },
        "tax_cents": { "type": "integer", "minimum": 0 },
        "discount": { "type": "number", "minimum": 0, "maximum": 1 },
        "items_count": { "type": "integer", "minimum": 1, "maximum": 1000 },
        "express": { "type": "boolean" },
        "gift": { "type": "boolean" },
        "created_at": { "type": "string", "format": "date-time" },
        "channel": { "type": "string", "enum": ["web", "app", "store"] },
        "country": { "type": "string", "pattern": "^[A-Z]{2}$" },
        "postcode": { "type": "string", "maxLength": 16 },
        "email": { "type": "string", "format": "email", "maxLength": 254 },
        "loyalty_points": { "type": "integer", "minimum": 0 },
        "tags": { "type": "array", "maxItems": 16, "items": { "type": "string", "maxLength": 32 } },
        "shipping": {
            "type": "object",
            "required": ["method", "days"],
            "properties": {
                "method": { "type": "string", "enum": ["standard", "express", "pickup"] },
                "days": { "type": "integer", "minimum": 0, "maximum": 60 }
            }
        },
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 100,
            "items": {
                "type": "object",
                "required": ["sku", "qty", "price_cents"],
                "properties": {
                    "sku": { "type": "string", "maxLength": 32 },
                    "qty": { "type": "integer", "minimum": 1 },
                    "price_cents": { "type": "integer", "minimum": 0 }
                }
            }
        },
        "note": { "type": "string", "maxLength": 2048 }
    });
    let required: Vec<String> = properties
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "order placed (jetway bench)",
        "type": "object",
        "additionalProperties": false,
        "required": required,
        "properties": properties
    })
}

/// A valid event of exactly `PAYLOAD` bytes (the note pads it).
fn event(note: &str) -> serde_json::Value {
    json!({
        "order_id": "ord-00412345",
        "customer_id": "cus-7f3a9c21",
        "status": "created",
        "currency": "EUR",
        "total_cents": 12990,
        "tax_cents": 2074,
        "discount": 0.1,
        "items_count": 3,
        "express": false,
        "gift": true,
        "created_at": "2026-11-27T15:46:00Z",
        "channel": "web",
        "country": "DE",
        "postcode": "10115",
        "email": "someone@example.com",
        "loyalty_points": 420,
        "tags": ["spring", "promo", "newsletter"],
        "shipping": { "method": "standard", "days": 3 },
        "lines": [
            { "sku": "SKU-1001", "qty": 1, "price_cents": 4990 },
            { "sku": "SKU-2002", "qty": 2, "price_cents": 4000 }
        ],
        "note": note
    })
}

fn body() -> Res<Bytes> {
    let bare = serde_json::to_vec(&event("")).ctx("encoding the event")?;
    let pad = PAYLOAD
        .checked_sub(bare.len())
        .ok_or("the event is longer than its payload size")?;
    let body = serde_json::to_vec(&event(&"n".repeat(pad))).ctx("encoding the event")?;
    if body.len() != PAYLOAD {
        return Err(format!("event is {} bytes, not {PAYLOAD}", body.len()));
    }
    Ok(Bytes::from(body))
}

fn yaml(b: &Bench) -> String {
    format!(
        "app_id: bench-typed\n\
         shutdown_grace: 10s\n\
         log: {{ format: text, level: info }}\n\
         nats: {{ url: \"{}\" }}\n\
         streams:\n\
         \x20 - {{ name: {STREAM}, subjects: [\"typed.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         schemas: {{ validate: enforce, unknown_types: allow }}\n\
         subscriptions: []\n",
        b.nats.url()
    )
}

fn request(host: &str, payload: Bytes, typed: bool) -> MakeRequest {
    let path = format!("/v1/publish/{SUBJECT}");
    let host = host.to_string();
    Arc::new(move |_| {
        let mut r = Request::post(path.as_str())
            .header(HOST, host.as_str())
            .header(CONTENT_TYPE, "application/json");
        if typed {
            r = r.header("jetway-event-type", EVENT_TYPE);
        }
        r.body(Full::new(payload.clone()))
            .expect("a request built from valid parts")
    })
}

/// Registers the schema and waits until the publish path refuses an
/// event that breaks it (so the measured publishes are validated ones).
async fn register(side: &Sidecar, body: &Bytes) -> Res<()> {
    let (status, answer) = side
        .call(
            reqwest::Method::POST,
            &format!("/v1/schemas/{EVENT_TYPE}/versions"),
            Some(&schema()),
        )
        .await?;
    if status != 201 && status != 200 {
        return Err(format!(
            "registering the schema answered {status}: {answer}"
        ));
    }
    let instance: serde_json::Value = serde_json::from_slice(body).ctx("the event")?;
    let (status, answer) = side
        .call(
            reqwest::Method::POST,
            &format!("/v1/schemas/{EVENT_TYPE}/validate"),
            Some(&instance),
        )
        .await?;
    if status != 200 || answer["valid"] != json!(true) {
        return Err(format!(
            "the bench event does not validate ({status}): {answer}"
        ));
    }
    let mut broken = instance.clone();
    broken["country"] = json!("Germany");
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/publish/{SUBJECT}", side.api());
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let status = http
            .post(&url)
            .header("jetway-event-type", EVENT_TYPE)
            .json(&broken)
            .send()
            .await
            .ctx(&format!("POST {url}"))?
            .status();
        if status == 422 {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!(
                "a typed event that breaks its schema still answers {status} after 10 s"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn run(b: &Bench, r: &mut crate::report::Results) -> Res<()> {
    eprintln!("  typed publish (issue 12): typed and untyped, {PAYLOAD} B x {CONNS} conns");
    let payload = body()?;
    let side = Sidecar::start(&yaml(b)).await?;
    register(&side, &payload).await?;
    let pid = side.pid()?;
    let api = side.api().to_string();
    let typed_req = request(&api, payload.clone(), true);
    let untyped_req = request(&api, payload.clone(), false);
    let warm = Stop {
        duration: Duration::from_millis(500),
        max_requests: Some(if b.plan.quick { 100 } else { 3_000 }),
    };
    let mut typed_published = load::http_closed(&api, CONNS, warm, typed_req.clone())
        .await?
        .ok;
    load::http_closed(&api, CONNS, warm, untyped_req.clone()).await?;
    b.purge(STREAM).await?;
    let rounds = b.plan.ab_rounds();
    let (mut typed, mut untyped) = (Acc::default(), Acc::default());
    for round in 0..rounds {
        for typed_turn in [round % 2 == 0, round % 2 != 0] {
            let make = if typed_turn {
                typed_req.clone()
            } else {
                untyped_req.clone()
            };
            let (run, cpu) = b.http_run(pid, &api, CONNS, b.plan.stop, make).await?;
            if typed_turn {
                typed_published += run.ok;
                typed.add(&run, cpu);
            } else {
                untyped.add(&run, cpu);
            }
            b.purge(STREAM).await?;
        }
    }
    let validated = side
        .metric(
            "jetway_schema_validations_total",
            &[("type", EVENT_TYPE), ("outcome", "valid")],
        )
        .await?;
    side.stop().await;
    let result = TypedResult {
        payload: PAYLOAD,
        conns: CONNS,
        schema_properties: schema()["properties"]
            .as_object()
            .map(|o| o.len())
            .unwrap_or(0),
        rounds,
        typed: typed.rate(),
        untyped: untyped.rate(),
        ratio: typed.rate() / untyped.rate(),
        typed_p50_us: typed.quantile_us(0.5),
        untyped_p50_us: untyped.quantile_us(0.5),
        typed_cpu_s_per_10k: typed.cpu_per_10k(),
        untyped_cpu_s_per_10k: untyped.cpu_per_10k(),
        typed_published,
        validated,
    };
    eprintln!(
        "    typed {:>8.0}/s  untyped {:>8.0}/s  ratio {:.2}  (p50 {:.0} / {:.0} us, CPU s per 10k {:.3} / {:.3}; {} typed publishes, {} validated)",
        result.typed,
        result.untyped,
        result.ratio,
        result.typed_p50_us,
        result.untyped_p50_us,
        result.typed_cpu_s_per_10k,
        result.untyped_cpu_s_per_10k,
        result.typed_published,
        result.validated
    );
    r.typed = Some(result);
    Ok(())
}
