//! The `/v1` API as a client sees it: [`Api`] for calls whose answers
//! must succeed, [`Answer`] and [`post`] for any status and its `code`.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::config::{s1_yaml, subscriptions};
use super::{config_yaml, eventually, Endpoint, Nats, Process, Sidecar};

/// The `/v1` API of a sidecar, in-process or a child process.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

impl Api {
    pub fn of(s: &Sidecar) -> Api {
        Api {
            http: s.http.clone(),
            base: s.url(""),
        }
    }

    /// A sidecar of [`config_yaml`] with `head` (more top-level YAML) and
    /// the `subscriptions` `subs`, and its API.
    pub async fn start(nats: &Nats, head: &str, subs: &[String]) -> (Sidecar, Api) {
        let yaml = config_yaml(nats, &format!("{head}{}", subscriptions(subs)));
        let sidecar = Sidecar::start(&yaml).await;
        let api = Api::of(&sidecar);
        (sidecar, api)
    }

    /// [`Api::start`] with the one subscription `s1` of `orders.>` to
    /// `endpoint` (path `/e`); `extra` is more keys of that entry.
    pub async fn start_s1(nats: &Nats, endpoint: &Endpoint, extra: &str) -> (Sidecar, Api) {
        let sidecar = Sidecar::start(&s1_yaml(nats, endpoint, extra)).await;
        let api = Api::of(&sidecar);
        (sidecar, api)
    }

    pub fn of_process(p: &Process) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: p.url(""),
        }
    }

    /// Publishes one event and returns its stream sequence.
    pub async fn publish(
        &self,
        subject: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> u64 {
        let mut request = self
            .http
            .post(format!("{}/v1/publish/{subject}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.body(body.into()).send().await.expect("publish");
        let status = response.status();
        let answer: Value = response.json().await.expect("json");
        assert_eq!(status, 200, "publish answered {answer}");
        answer["seq"].as_u64().expect("seq")
    }

    /// [`Api::publish_many`] into `ORDERS`, as the Idempotency-Keys the
    /// deliveries carry (`ORDERS:{seq}`).
    pub async fn publish_keys(&self, subject: &str, n: usize) -> HashSet<String> {
        self.publish_many(subject, n)
            .await
            .into_iter()
            .map(|s| format!("ORDERS:{s}"))
            .collect()
    }

    /// Publishes `n` JSON events `{"n": i}` in one batch.
    pub async fn publish_many(&self, subject: &str, n: usize) -> Vec<u64> {
        let items: Vec<Value> = (0..n)
            .map(|i| json!({ "subject": subject, "data": { "n": i } }))
            .collect();
        let (status, answer) = self
            .send(reqwest::Method::POST, "/v1/publish", Some(json!(items)))
            .await;
        assert_eq!(status, 200, "batch answered {answer}");
        answer["results"]
            .as_array()
            .expect("results")
            .iter()
            .map(|r| r["seq"].as_u64().expect("seq"))
            .collect()
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, body).await
    }

    /// The entry of `GET /v1/subscriptions` for `name`.
    pub async fn subscription(&self, name: &str) -> Value {
        let (status, all) = self.get("/v1/subscriptions").await;
        assert_eq!(status, 200, "{all}");
        all["subscriptions"]
            .as_array()
            .expect("subscriptions")
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no subscription {name} in {all}"))
    }

    /// `GET /v1/dead-letters/{name}` items.
    pub async fn dead_letters(&self, name: &str) -> Vec<Value> {
        let (status, page) = self.get(&format!("/v1/dead-letters/{name}")).await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().expect("items").clone()
    }

    /// Waits until the subscription holds nothing: nothing pending, nothing
    /// unacknowledged, nothing in flight.
    pub async fn wait_drained(&self, name: &str) {
        eventually(&format!("{name} drained"), || async {
            let s = self.subscription(name).await;
            (s["pending"] == 0 && s["ack_pending"] == 0 && s["in_flight"] == 0).then_some(())
        })
        .await;
    }
}

/// What the sidecar answered.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// Asserts the status and the `code` of the JSON error body.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!((self.status, self.code()), (status, code), "{}", self.body);
    }

    /// [`Answer::assert_error`] that names the request (`at`) on failure.
    pub fn assert_error_at(&self, status: u16, code: &str, at: &str) {
        assert_eq!(
            (self.status, self.code()),
            (status, code),
            "{at}: {}",
            self.body
        );
    }

    pub fn seq(&self) -> u64 {
        self.body["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no seq in {}", self.body))
    }
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("response body");
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "{status}: body is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    Answer {
        status,
        headers,
        body,
    }
}

/// `POST /v1/publish/{subject}` with the given headers.
pub async fn post(
    s: &Sidecar,
    subject: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Answer {
    let mut request = s
        .http
        .post(s.url(&format!("/v1/publish/{subject}")))
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    answer(request.send().await.expect("publish request")).await
}

/// `POST /v1/publish` (a batch).
pub async fn post_batch(s: &Sidecar, content_type: &str, body: String) -> Answer {
    let response = s
        .http
        .post(s.url("/v1/publish"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("batch request");
    answer(response).await
}

/// Sends `method url` with no body and reads the JSON answer.
pub async fn request(http: &reqwest::Client, method: &str, url: &str) -> Answer {
    let method: reqwest::Method = method.parse().expect("method");
    answer(http.request(method, url).send().await.expect("send")).await
}
