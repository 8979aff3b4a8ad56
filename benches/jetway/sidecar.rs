//! A sidecar of a phase's own (typed, tracing, replay): started beside the
//! main one with the config that phase needs, driven through its admin
//! routes, its metrics read back; and the two measurements those phases
//! share: a backlog drained through a subscription, and RSS sampled while
//! something runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::load::{self, Run};
use crate::procs::{usage, Jetway};
use crate::roles::Sink;
use crate::{Ctx, Res};

/// A message that arrives in a pull request left open when its
/// subscription was paused is handed back with a 3 s delayed NAK (jetway's
/// `HAND_BACK_DELAY`), and such a request lives 2 s at most once paused.
/// Waiting this long after a decoy message means neither can put a 3 s gap
/// into the next timed drain.
const HAND_BACK_WAIT: Duration = Duration::from_millis(4500);

pub struct Sidecar {
    pub jetway: Jetway,
    http: reqwest::Client,
}

impl Sidecar {
    pub async fn start(yaml: &str) -> Res<Sidecar> {
        Ok(Sidecar {
            jetway: Jetway::start(yaml).await?,
            http: reqwest::Client::new(),
        })
    }

    pub fn pid(&self) -> Res<u32> {
        self.jetway.pid()
    }

    pub fn api(&self) -> &str {
        &self.jetway.api
    }

    /// A request to the API; the status and the answer as JSON (`null` when
    /// it is not JSON).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Res<(u16, serde_json::Value)> {
        let url = format!("http://{}{path}", self.jetway.api);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.ctx(&format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .ctx(&format!("reading the answer to {method} {url}"))?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// POST that must answer 2xx.
    pub async fn admin(&self, path: &str) -> Res<()> {
        let (status, answer) = self.call(reqwest::Method::POST, path, None).await?;
        if !(200..300).contains(&status) {
            return Err(format!("POST {path} answered {status}: {answer}"));
        }
        Ok(())
    }

    pub async fn pause(&self, subscription: &str) -> Res<()> {
        self.admin(&format!("/v1/subscriptions/{subscription}/pause"))
            .await
    }

    pub async fn resume(&self, subscription: &str) -> Res<()> {
        self.admin(&format!("/v1/subscriptions/{subscription}/resume"))
            .await
    }

    /// The sum of every sample of `name` whose labels include `labels`
    /// (0 when there is none), from `/metrics`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Res<f64> {
        let url = format!("http://{}/metrics", self.jetway.metrics);
        let text = self
            .http
            .get(&url)
            .send()
            .await
            .ctx(&format!("GET {url}"))?
            .text()
            .await
            .ctx("reading /metrics")?;
        Ok(sum_of(&text, name, labels))
    }

    pub fn log_tail(&self) -> String {
        self.jetway.log_tail()
    }

    /// SIGTERM and the exit; a sidecar that does not stop is said, not fatal.
    pub async fn stop(mut self) {
        match self.jetway.terminate(Duration::from_secs(30)).await {
            Ok(Some(0)) => {}
            Ok(code) => eprintln!(
                "    a phase's sidecar exited with {code:?}; log:\n{}",
                self.jetway.log_tail()
            ),
            Err(e) => eprintln!("    {e}"),
        }
    }
}

/// Sums the samples of a Prometheus text exposition.
fn sum_of(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_part, value) = match rest.strip_prefix('{') {
                Some(r) => r.split_once('}')?,
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            let all = labels
                .iter()
                .all(|(k, v)| label_part.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.split_whitespace().next()?.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// One backlog drained through a paused subscription.
pub struct Drained {
    /// Deliveries counted at the sink (the backlog and the decoy), and the
    /// time from resume to the last of them.
    pub run: Run,
    pub cpu_s: f64,
    /// Requests the sink counted by the time the subscription was paused
    /// again (more than `run.ok` only if something came twice).
    pub delivered: u64,
}

/// Fills the subscription's subject with `n` messages while it is paused,
/// then times resume to the `n + 1`-th delivery at the sink (the backlog
/// and a decoy published first, see `HAND_BACK_WAIT`), and pauses again.
pub async fn drain(
    js: &async_nats::jetstream::Context,
    side: &Sidecar,
    sink: &Sink,
    subscription: &str,
    subject: &str,
    payload: Bytes,
    n: usize,
) -> Res<Drained> {
    load::publish_acked(js, subject, payload.clone()).await?;
    tokio::time::sleep(HAND_BACK_WAIT).await;
    load::backlog(js, subject, payload, n).await?;
    let pid = side.pid()?;
    sink.reset();
    let before = usage(pid)?;
    let t0 = Instant::now();
    side.resume(subscription).await?;
    let expected = n as u64 + 1;
    let waited = sink.wait_for(expected, Duration::from_secs(300)).await;
    let elapsed = t0.elapsed();
    let after = usage(pid)?;
    side.pause(subscription).await?;
    waited.map_err(|e| {
        format!(
            "draining {subscription}: {e}; jetway log:\n{}",
            side.log_tail()
        )
    })?;
    Ok(Drained {
        run: Run {
            ok: expected,
            elapsed,
            hist: load::histogram(),
        },
        cpu_s: after.cpu_s - before.cpu_s,
        delivered: sink.count(),
    })
}

/// VmRSS of a process sampled on a fixed period until `finish`.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flag.load(Ordering::SeqCst) {
                tick.tick().await;
                match usage(pid) {
                    Ok(u) => samples.push(u.rss_kib),
                    Err(_) => break,
                }
            }
            samples
        });
        RssSampler { stop, task }
    }

    /// The samples in KiB, in order.
    pub async fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or_default()
    }
}
