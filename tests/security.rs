//! Security checks: the API refuses to listen beyond loopback without a
//! token, a token is only accepted whole, and no secret (API token,
//! callback token, signing secret, NATS credentials) ever reaches logs,
//! error answers, dead letters or `/metrics`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use common::{config_yaml, eventually, free_port, signal, wait_ready, Endpoint, Nats, Sidecar};
use serde_json::Value;

fn jetway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jetway"))
}

fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("jetway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

/// `jetway check` on `yaml` with extra environment; (exit code, output).
fn check(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), yaml);
    let out = jetway()
        .args(["check", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .expect("run jetway check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exit code"), text)
}

#[test]
fn a_non_loopback_api_listen_needs_a_token_or_an_explicit_opt_in() {
    let base = "app_id: a\nstreams: [{ name: ORDERS, subjects: [\"orders.>\"] }]\n";
    for listen in ["0.0.0.0:4480", "[::]:4480", "10.1.2.3:4480"] {
        let (code, out) = check(&format!("{base}api: {{ listen: \"{listen}\" }}\n"), &[]);
        assert_eq!(code, 64, "{listen} without a token: {out}");
        assert!(out.contains("api.listen"), "{out}");
        let (code, out) = check(
            &format!("{base}api: {{ listen: \"{listen}\", token: t0ken }}\n"),
            &[],
        );
        assert_eq!(code, 0, "{listen} with a token: {out}");
        let (code, out) = check(
            &format!("{base}api: {{ listen: \"{listen}\", insecure_listen: true }}\n"),
            &[],
        );
        assert_eq!(code, 0, "{listen} forced: {out}");
    }
    for listen in ["127.0.0.1:4480", "[::1]:4480", "127.9.9.9:4480"] {
        let (code, out) = check(&format!("{base}api: {{ listen: \"{listen}\" }}\n"), &[]);
        assert_eq!(code, 0, "{listen} is loopback: {out}");
    }
    // The default is loopback, and an override cannot sneak past the rule.
    assert_eq!(check(base, &[]).0, 0);
    let (code, out) = check(base, &[("JETWAY_API__LISTEN", "0.0.0.0:4480")]);
    assert_eq!(code, 64, "{out}");

    // `run` refuses the same way, before touching the network.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(
        dir.path(),
        &format!(
            "{base}nats: {{ url: \"nats://127.0.0.1:{}\" }}\napi: {{ listen: \"0.0.0.0:{}\" }}\n",
            free_port(),
            free_port()
        ),
    );
    let status = jetway()
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run jetway");
    assert_eq!(status.code(), Some(64));
}

#[test]
fn config_problems_never_echo_a_secret() {
    let secret = "tok-e1c2d3b4a5968778";
    let yaml = format!(
        "app_id: a\napi: {{ listen: \"0.0.0.0:1\", token: {secret}, bogus: 1 }}\n\
         app: {{ callback_token: {secret} }}\nnats: {{ token: {secret}, user: u, password: {secret} }}\n\
         subscriptions: [{{ name: s, subject: x, endpoint: 'http://127.0.0.1:1/', signing_secret: whsec_{secret} }}]\n"
    );
    let (code, out) = check(&yaml, &[]);
    assert_eq!(code, 64, "{out}");
    assert!(!out.contains(secret), "a secret in the problem list: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_accepted_only_whole() {
    const TOKEN: &str = "s3cr3t-T0ken-0123456789abcdef";
    let nats = Nats::start();
    let sidecar = Sidecar::start(&config_yaml(
        &nats,
        &format!("api: {{ token: \"{TOKEN}\" }}\n"),
    ))
    .await;
    let url = sidecar.url("/v1/publish/orders.created");
    let same_length_wrong: String = TOKEN
        .chars()
        .map(|c| if c == '0' { '1' } else { c })
        .collect();
    assert_eq!(same_length_wrong.len(), TOKEN.len());
    let last_char_wrong = format!("{}X", &TOKEN[..TOKEN.len() - 1]);
    let refused = [
        None,
        Some(String::new()),
        Some("Bearer ".into()),
        Some(format!("Bearer {same_length_wrong}")),
        Some(format!("Bearer {last_char_wrong}")),
        Some(format!("Bearer {}", &TOKEN[..TOKEN.len() - 1])),
        Some(format!("Bearer {}", &TOKEN[..1])),
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer  {TOKEN}")),
        Some(format!("Basic {TOKEN}")),
        Some(TOKEN.to_string()),
    ];
    for auth in &refused {
        let mut request = sidecar.http.post(&url).body("{}");
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        let r = request.send().await.expect("send");
        assert_eq!(r.status(), 401, "{auth:?}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert!(!body.to_string().contains(TOKEN));
    }
    // Unknown routes reveal nothing without the token either.
    let r = sidecar
        .http
        .get(sidecar.url("/v1/nope"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    for scheme in ["Bearer", "bearer"] {
        let r = sidecar
            .http
            .post(&url)
            .header("authorization", format!("{scheme} {TOKEN}"))
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200, "{scheme}");
    }
    assert_eq!(
        sidecar
            .metric("jetway_publish_total", &[("outcome", "unauthorized")])
            .await,
        refused.len() as f64
    );
    // Health and metrics stay open (another listener, nothing secret).
    let r = sidecar
        .http
        .get(sidecar.metrics_url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
}

/// The secrets of a run; each must never appear in any output.
struct Secrets {
    api_token: &'static str,
    callback_token: &'static str,
    signing_secret: &'static str,
    nats_token: &'static str,
    nats_password: &'static str,
}

const SECRETS: Secrets = Secrets {
    api_token: "apitok-6b1f0c9e2d7a4f3b",
    callback_token: "cbtok-93a7e1d5c2b8f604",
    // whsec_ + base64 of 24 bytes.
    signing_secret: "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTAxMjM0NTY3",
    nats_token: "natstok-5d4c3b2a1f0e9d8c",
    nats_password: "natspw-0f1e2d3c4b5a6978",
};

impl Secrets {
    fn all(&self) -> Vec<&'static str> {
        vec![
            self.api_token,
            self.callback_token,
            self.signing_secret,
            // The key material alone, too.
            &self.signing_secret["whsec_".len()..],
            "secret-signing-key-01234567",
            self.nats_token,
            self.nats_password,
        ]
    }
}

enum NatsAuth {
    Token,
    UserPassword,
}

/// Runs the real binary with every secret configured, RUST_LOG=debug and
/// the given log format; drives publishes (some refused), deliveries that
/// fail, dead letters and replays; returns everything it said or answered.
async fn run_and_collect(auth: NatsAuth, log_format: &str) -> String {
    let s = &SECRETS;
    let nats = match auth {
        NatsAuth::Token => Nats::start_with(&["--auth", s.nats_token]),
        NatsAuth::UserPassword => {
            Nats::start_with(&["--user", "jetway", "--pass", s.nats_password])
        }
    };
    let nats_auth = match auth {
        NatsAuth::Token => "token: \"${TEST_NATS_TOKEN}\",".to_string(),
        NatsAuth::UserPassword => "user: jetway, password: \"${TEST_NATS_PASSWORD}\",".to_string(),
    };
    let url = nats.url();
    let ok = Endpoint::ok().await;
    let failing =
        Endpoint::start(|_, _| async { (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response() })
            .await;
    let rejecting =
        Endpoint::start(|_, _| async { (StatusCode::BAD_REQUEST, "no").into_response() }).await;
    let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let yaml = format!(
        "app_id: sec\n\
         shutdown_grace: 2s\n\
         log: {{ format: {log_format}, level: debug }}\n\
         nats: {{ url: \"{url}\", {nats_auth} request_timeout: 2s }}\n\
         api: {{ listen: \"{api}\", token: \"${{TEST_API_TOKEN}}\" }}\n\
         metrics: {{ listen: \"{metrics}\" }}\n\
         app: {{ callback_token: \"${{TEST_CALLBACK_TOKEN}}\" }}\n\
         streams:\n  - {{ name: ORDERS, subjects: [\"orders.>\"] }}\n\
         subscriptions:\n\
         \x20 - {{ name: ok, subject: orders.ok, endpoint: \"{ok}\", signing_secret: \"${{TEST_SIGNING_SECRET}}\" }}\n\
         \x20 - {{ name: fails, subject: orders.fail, endpoint: \"{failing}\", signing_secret: \"${{TEST_SIGNING_SECRET}}\",\n\
         \x20     retry: {{ max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms }} }}\n\
         \x20 - {{ name: rejects, subject: orders.reject, endpoint: \"{rejecting}\" }}\n\
         \x20 - {{ name: down, subject: orders.down, endpoint: \"http://127.0.0.1:{down}/x\" }}\n",
        ok = ok.url("/ok"),
        failing = failing.url("/fail"),
        rejecting = rejecting.url("/reject"),
        down = free_port(),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &yaml);
    let stdout = std::fs::File::create(dir.path().join("stdout")).expect("file");
    let stderr = std::fs::File::create(dir.path().join("stderr")).expect("file");
    let mut child = jetway()
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .env("TEST_API_TOKEN", s.api_token)
        .env("TEST_CALLBACK_TOKEN", s.callback_token)
        .env("TEST_SIGNING_SECRET", s.signing_secret)
        .env("TEST_NATS_TOKEN", s.nats_token)
        .env("TEST_NATS_PASSWORD", s.nats_password)
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .expect("spawn jetway");

    let http = reqwest::Client::new();
    let mut answers = String::new();
    wait_ready(metrics).await;

    let bearer = format!("Bearer {}", s.api_token);
    let publish = |subject: &str, auth: Option<String>| {
        let mut r = http
            .post(format!("http://{api}/v1/publish/{subject}"))
            .header("content-type", "application/json")
            .header(
                "idempotency-key",
                format!("key-{subject}-{}", auth.is_some()),
            )
            .body("{\"n\":1}");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    // Refused: no token, a wrong one, one off by its last character.
    let wrong = format!("Bearer {}x", &s.api_token[..s.api_token.len() - 1]);
    for auth in [None, Some("Bearer nope".to_string()), Some(wrong)] {
        let r = publish("orders.ok", auth).await.expect("send");
        assert_eq!(r.status(), 401);
        answers.push_str(&r.text().await.expect("text"));
    }
    for subject in [
        "orders.ok",
        "orders.fail",
        "orders.reject",
        "orders.down",
        "orders.*bad",
    ] {
        let r = publish(subject, Some(bearer.clone())).await.expect("send");
        answers.push_str(&r.text().await.expect("text"));
    }
    // A batch carrying an Authorization header of its own in an item.
    let r = http
        .post(format!("http://{api}/v1/publish"))
        .header("authorization", &bearer)
        .json(&serde_json::json!([
            {"subject": "orders.ok", "data": 1, "headers": {"authorization": bearer}},
            {"subject": "orders.reject", "data": 2},
        ]))
        .send()
        .await
        .expect("send");
    answers.push_str(&r.text().await.expect("text"));

    ok.wait_for(2).await;
    let received = ok.received();
    assert_eq!(
        received[0].header("authorization").as_deref(),
        Some(format!("Bearer {}", s.callback_token).as_str()),
        "the callback token is sent to the app, and only there"
    );
    assert!(received[0].header("webhook-signature").is_some());

    // Dead letters of both failing subscriptions, listed and replayed.
    let get = |path: String| {
        let (http, bearer) = (http.clone(), bearer.clone());
        async move {
            http.get(format!("http://{api}{path}"))
                .header("authorization", bearer)
                .send()
                .await
                .expect("send")
                .text()
                .await
                .expect("text")
        }
    };
    for sub in ["fails", "rejects"] {
        let list = eventually(&format!("dead letters of {sub}"), || async move {
            let text = get(format!("/v1/dead-letters/{sub}")).await;
            let v: Value = serde_json::from_str(&text).ok()?;
            (!v["items"].as_array()?.is_empty()).then_some(text)
        })
        .await;
        answers.push_str(&list);
        let r = http
            .post(format!("http://{api}/v1/dead-letters/{sub}/replay"))
            .header("authorization", &bearer)
            .send()
            .await
            .expect("send");
        answers.push_str(&r.text().await.expect("text"));
    }
    answers.push_str(&get("/v1/subscriptions".into()).await);
    answers.push_str(&get("/v1/streams/ORDERS/messages/1".into()).await);
    answers.push_str(&get("/v1/subjects/orders.ok/last".into()).await);
    answers.push_str(&get("/v1/openapi.json".into()).await);
    let metrics_text = http
        .get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(metrics_text.contains("jetway_dead_letters_total"));
    answers.push_str(&metrics_text);

    signal(child.id(), "TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "jetway did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stdout = std::fs::read_to_string(dir.path().join("stdout")).expect("stdout");
    let stderr = std::fs::read_to_string(dir.path().join("stderr")).expect("stderr");
    let logs = format!("{stdout}{stderr}");
    assert!(
        logs.contains("DEBUG"),
        "debug logging was on, so there is something to search: {}",
        &logs[..logs.len().min(2000)]
    );
    format!("{logs}\n{answers}")
}

fn assert_no_secret(output: &str) {
    for secret in SECRETS.all() {
        if let Some(at) = output.find(secret) {
            let from = output[..at]
                .char_indices()
                .rev()
                .nth(300)
                .map_or(0, |(i, _)| i);
            let to = (at + secret.len() + 300).min(output.len());
            panic!(
                "secret {secret} found in the output:\n{}",
                String::from_utf8_lossy(&output.as_bytes()[from..to])
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_text_logs_answers_or_metrics_with_a_nats_token() {
    let output = run_and_collect(NatsAuth::Token, "text").await;
    assert_no_secret(&output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_json_logs_answers_or_metrics_with_a_nats_password() {
    let output = run_and_collect(NatsAuth::UserPassword, "json").await;
    assert_no_secret(&output);
}

/// async-nats logs each server address with `{:?}` at DEBUG, password and
/// all, and does not authenticate with it either: a URL with credentials
/// must be refused by `jetway check`, without echoing them.
#[test]
fn credentials_in_the_nats_url_are_refused_without_echoing_them() {
    let password = SECRETS.nats_password;
    let (code, out) = check(
        &format!("app_id: a\nnats: {{ url: \"nats://jetway:{password}@127.0.0.1:4222\" }}\n"),
        &[],
    );
    assert_eq!(code, 64, "{out}");
    assert!(out.contains("nats.url"), "{out}");
    assert!(!out.contains(password), "{out}");
}
