//! The load generators: HTTP/1 keep-alive connections driven closed loop
//! (each connection sends its next request when the answer arrived) or open
//! loop (requests on a fixed schedule), and the same two shapes for raw
//! JetStream publishes. Latencies go into HDR histograms (nanoseconds).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::sync::Barrier;

use crate::{Ctx, Res};

pub fn histogram() -> Histogram<u64> {
    // 1 µs .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("static histogram bounds")
}

/// What one run of a generator produced.
pub struct Run {
    pub ok: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// How long a run lasts: until a time, or until a number of requests.
#[derive(Clone, Copy)]
pub struct Stop {
    pub duration: Duration,
    pub max_requests: Option<u64>,
}

/// One request to send, as a function of its number.
pub type MakeRequest = Arc<dyn Fn(u64) -> Request<Full<Bytes>> + Send + Sync>;

async fn connect(addr: &str) -> Res<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .ctx(&format!("load generator: connecting to {addr}"))?;
    stream.set_nodelay(true).ctx("set_nodelay")?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ctx(&format!("load generator: HTTP handshake with {addr}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends one request and checks the answer is 200 (a batch's 207 counts as
/// a failure); returns the body.
async fn exchange(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Res<Bytes> {
    let path = req.uri().path().to_string();
    sender
        .ready()
        .await
        .ctx("load generator: connection closed")?;
    let resp = sender
        .send_request(req)
        .await
        .ctx(&format!("load generator: POST {path}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .ctx(&format!("load generator: reading the answer to {path}"))?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!(
            "load generator: POST {path} answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    Ok(body)
}

/// Closed loop: `conns` connections, each sending its next request as soon
/// as the previous one was answered. Fails on the first non-2xx.
pub async fn http_closed(addr: &str, conns: usize, stop: Stop, make: MakeRequest) -> Res<Run> {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect(addr).await?);
    }
    let barrier = Arc::new(Barrier::new(conns + 1));
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conns);
    for mut sender in senders {
        let (barrier, issued, make) = (barrier.clone(), issued.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ok = 0u64;
            barrier.wait().await;
            let until = Instant::now() + stop.duration;
            let mut last = Instant::now();
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if stop.max_requests.is_some_and(|m| n >= m) || Instant::now() >= until {
                    break;
                }
                let t = Instant::now();
                exchange(&mut sender, make(n)).await?;
                last = Instant::now();
                let _ = hist.record((last - t).as_nanos() as u64);
                ok += 1;
            }
            Ok::<_, String>((ok, hist, last))
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    collect(tasks, started).await
}

/// What one connection (or lane) of a run reports: answers, latencies,
/// when its last answer came.
type Lane = tokio::task::JoinHandle<Res<(u64, Histogram<u64>, Instant)>>;

async fn collect(tasks: Vec<Lane>, started: Instant) -> Res<Run> {
    let mut run = Run {
        ok: 0,
        elapsed: Duration::ZERO,
        hist: histogram(),
    };
    let mut end = started;
    for t in tasks {
        let (ok, hist, last) = t.await.ctx("load generator task")??;
        run.ok += ok;
        run.hist.add(&hist).ctx("merging histograms")?;
        end = end.max(last);
    }
    run.elapsed = end - started;
    Ok(run)
}

/// When the latency of a scheduled request starts: at its scheduled time if
/// the connection was still busy then (the wait is part of the latency, no
/// coordinated omission), else when it was sent (the timer's own lateness
/// is not the server's).
fn latency_start(scheduled: Instant, free_at: Instant, sent: Instant) -> Instant {
    if free_at > scheduled {
        scheduled
    } else {
        sent
    }
}

/// Open loop: `rate` requests per second spread over `conns` connections.
pub async fn http_open(
    addr: &str,
    conns: usize,
    rate: f64,
    stop: Stop,
    make: MakeRequest,
) -> Res<Run> {
    let mut senders = Vec::with_capacity(conns);
    for _ in 0..conns {
        senders.push(connect(addr).await?);
    }
    let barrier = Arc::new(Barrier::new(conns + 1));
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let total = stop
        .max_requests
        .unwrap_or((rate * stop.duration.as_secs_f64()).ceil() as u64);
    let mut tasks = Vec::with_capacity(conns);
    for (k, mut sender) in senders.into_iter().enumerate() {
        let (barrier, start_at, make) = (barrier.clone(), start_at.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ok = 0u64;
            barrier.wait().await;
            let t0 = *start_at.get_or_init(|| Instant::now() + Duration::from_millis(5));
            let mut free_at = t0;
            let mut last = t0;
            let mut n = k as u64;
            while n < total {
                let scheduled = t0 + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(scheduled.into()).await;
                let sent = Instant::now();
                exchange(&mut sender, make(n)).await?;
                last = Instant::now();
                let _ =
                    hist.record((last - latency_start(scheduled, free_at, sent)).as_nanos() as u64);
                free_at = last;
                ok += 1;
                n += conns as u64;
            }
            Ok::<_, String>((ok, hist, last))
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut run = collect(tasks, started).await?;
    if let Some(t0) = start_at.get() {
        run.elapsed = run
            .elapsed
            .saturating_sub(t0.saturating_duration_since(started));
    }
    Ok(run)
}

/// Raw JetStream publishing: `in_flight` tasks, each publishing and awaiting
/// its PubAck before the next (closed loop): bursts of one.
pub async fn raw_closed(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: Bytes,
    in_flight: usize,
    stop: Stop,
) -> Res<Run> {
    raw_bursts(js, subject, payload, in_flight, 1, stop).await
}

/// Raw publishing the way one batch request publishes: each of `lanes`
/// sends `burst` messages, awaits their `burst` PubAcks, and only then
/// sends the next burst. [`raw_closed`] keeps its window full all the time;
/// a client that waits for each batch's answer cannot, so this is the most
/// a batch at that many connections could get with no HTTP and no parsing.
/// The latency recorded is a whole burst's.
pub async fn raw_bursts(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: Bytes,
    lanes: usize,
    burst: usize,
    stop: Stop,
) -> Res<Run> {
    let barrier = Arc::new(Barrier::new(lanes + 1));
    let issued = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (barrier, issued, js, payload, subject) = (
            barrier.clone(),
            issued.clone(),
            js.clone(),
            payload.clone(),
            subject.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ok = 0u64;
            barrier.wait().await;
            let until = Instant::now() + stop.duration;
            let mut last = Instant::now();
            // One vector for the lane's whole run: no allocation per burst.
            let mut acks = Vec::with_capacity(burst);
            loop {
                let n = issued.fetch_add(burst as u64, Ordering::Relaxed);
                if stop.max_requests.is_some_and(|m| n >= m) || Instant::now() >= until {
                    break;
                }
                let t = Instant::now();
                for _ in 0..burst {
                    acks.push(
                        js.publish(subject.clone(), payload.clone())
                            .await
                            .ctx(&format!("raw publish to {subject}"))?,
                    );
                }
                for ack in acks.drain(..) {
                    ack.await.ctx(&format!("PubAck for {subject}"))?;
                }
                last = Instant::now();
                let _ = hist.record((last - t).as_nanos() as u64);
                ok += burst as u64;
            }
            Ok::<_, String>((ok, hist, last))
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    collect(tasks, started).await
}

/// Raw publishing on a schedule (open loop), latency as in [`http_open`].
pub async fn raw_open(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: Bytes,
    lanes: usize,
    rate: f64,
    stop: Stop,
) -> Res<Run> {
    let barrier = Arc::new(Barrier::new(lanes + 1));
    let start_at = Arc::new(std::sync::OnceLock::<Instant>::new());
    let total = stop
        .max_requests
        .unwrap_or((rate * stop.duration.as_secs_f64()).ceil() as u64);
    let mut tasks = Vec::with_capacity(lanes);
    for k in 0..lanes {
        let (barrier, start_at, js, payload, subject) = (
            barrier.clone(),
            start_at.clone(),
            js.clone(),
            payload.clone(),
            subject.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = histogram();
            let mut ok = 0u64;
            barrier.wait().await;
            let t0 = *start_at.get_or_init(|| Instant::now() + Duration::from_millis(5));
            let mut free_at = t0;
            let mut last = t0;
            let mut n = k as u64;
            while n < total {
                let scheduled = t0 + Duration::from_secs_f64(n as f64 / rate);
                tokio::time::sleep_until(scheduled.into()).await;
                let sent = Instant::now();
                publish_acked(&js, &subject, payload.clone()).await?;
                last = Instant::now();
                let _ =
                    hist.record((last - latency_start(scheduled, free_at, sent)).as_nanos() as u64);
                free_at = last;
                ok += 1;
                n += lanes as u64;
            }
            Ok::<_, String>((ok, hist, last))
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut run = collect(tasks, started).await?;
    if let Some(t0) = start_at.get() {
        run.elapsed = run
            .elapsed
            .saturating_sub(t0.saturating_duration_since(started));
    }
    Ok(run)
}

pub async fn publish_acked(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: Bytes,
) -> Res<()> {
    let ack = js
        .publish(subject.to_string(), payload)
        .await
        .ctx(&format!("raw publish to {subject}"))?;
    ack.await.ctx(&format!("PubAck for {subject}"))?;
    Ok(())
}

/// Publishes `count` messages with up to `window` PubAcks outstanding (to
/// fill a backlog quickly; not measured).
pub async fn backlog(
    js: &async_nats::jetstream::Context,
    subject: &str,
    payload: Bytes,
    count: usize,
) -> Res<()> {
    use futures::StreamExt;
    let results: Vec<Res<()>> = futures::stream::iter(0..count)
        .map(|_| publish_acked(js, subject, payload.clone()))
        .buffer_unordered(256)
        .collect()
        .await;
    results.into_iter().collect()
}
