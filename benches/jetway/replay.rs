//! `replay` (issue 18): 100 000 dead letters of 16 KiB (quick: 2 000) in a
//! subscription's dead-letter stream, replayed with
//! `POST /v1/dead-letters/{subscription}/replay` (`{"limit":N}` per call
//! until `remaining` is 0) to an endpoint that answers 200, with the
//! sidecar's RSS sampled every 100 ms. The baseline is the delivery rate of
//! the same 16 KiB messages through the same subscription in the same run.
//!
//! How the DLQ is filled: the first 16 dead letters are jetway's own (the
//! endpoint answers 400 and the subscription dead-letters them); the rest
//! the bench writes straight into the stream with raw async-nats and many
//! PubAcks in flight, each built by jetway's own
//! `DeadLetters::message_headers` on the subject jetway uses, so they are
//! what jetway writes but the times; the header names of a bench-written
//! one are checked against a jetway-written one. Their originals are not in
//! the stream (replay reads only the dead letter).
//!
//! One dead letter in `OTHER_EVERY` is another app's (the DLQ stream is
//! shared by every app), so no file block of the stream ever holds this
//! subscription's dead letters alone. On nats-server 2.9.10, once a block
//! that held only one subject's messages is emptied and removed, the
//! server finds none of that subject's later messages any more (direct
//! get by subject, subject counts), so jetway's replay stops and answers
//! `remaining: 0` with the rest still stored. The probe before the figure
//! shows that on a DLQ of one subscription alone (`PROBE` dead letters, a
//! few blocks' worth), and its row says whether the server in use has it.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jetway::dead_letter::{DeadLetters, Failure};
use jetway::envelope::{Envelope, Reason};
use serde::Serialize;
use serde_json::json;

use crate::procs::{self, usage};
use crate::report::{row, size, target, Target};
use crate::roles::Sink;
use crate::sidecar::{drain, RssSampler, Sidecar};
use crate::{Bench, Ctx, Res};

const PAYLOAD: usize = 16 * 1024;
const CONCURRENCY: usize = 16;
const APP: &str = "bench-replay";
const STREAM: &str = "RPL";
const SUBJECT: &str = "rpl.msgs";
const SUBSCRIPTION: &str = "rpl";
/// jetway's default `dead_letter.stream`.
const DLQ: &str = "JETWAY_DLQ";
/// Dead letters jetway itself makes, as the model of the others.
const JETWAY_MADE: usize = 16;
/// Of every this many dead letters written, one is another app's.
const OTHER_EVERY: usize = 100;
/// Another app's dead letters, on the same stream.
const OTHER_SUBJECT: &str = "jetway.dlq.bench-other.s";
/// The probe's subscription and its dead letters (a few 8 MiB blocks of
/// 16 KiB messages).
const PROBE: &str = "probe";
const PROBE_LETTERS: usize = 1_500;
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

#[derive(Serialize)]
pub struct ReplayResult {
    pub dead_letters: usize,
    pub payload: usize,
    pub concurrency: usize,
    pub jetway_made: usize,
    pub bench_written: usize,
    /// The header names of a bench-written dead letter equal those of a
    /// jetway-written one.
    pub same_headers: bool,
    pub header_difference: String,
    /// Another app's dead letters written between them (one in
    /// `OTHER_EVERY`).
    pub other_written: usize,
    pub fill_s: f64,
    pub delivered_messages: usize,
    pub delivery_rate: f64,
    pub limit_per_call: usize,
    pub calls: usize,
    pub replay_s: f64,
    pub replay_rate: f64,
    /// replay / delivery
    pub ratio: f64,
    pub replayed: u64,
    pub failed: u64,
    pub remaining: u64,
    /// Requests at the endpoint during the replay, and distinct
    /// `Idempotency-Key`s among them.
    pub endpoint_requests: u64,
    pub endpoint_distinct: usize,
    /// Dead letters of the subscription in the stream after the replay,
    /// and on the list route's first page.
    pub dlq_left: u64,
    pub listed_after: usize,
    pub rss_before_kib: u64,
    pub peak_rss_sampled_kib: u64,
    pub peak_rss_hwm_kib: u64,
    pub sample_every_ms: u64,
    pub rss_samples_kib: Vec<u64>,
    pub probe: Probe,
}

/// A DLQ that holds one subscription's dead letters alone, replayed in two
/// calls: `{"limit": half}`, then the rest.
#[derive(Serialize)]
pub struct Probe {
    pub dead_letters: usize,
    pub first_limit: usize,
    pub replayed: u64,
    pub failed: u64,
    /// `remaining` as jetway answered the first call, and what the stream
    /// really held then (it held only these).
    pub remaining_answered_first: u64,
    pub in_stream_after_first: u64,
    pub remaining_answered_second: u64,
    /// After the first call, whether the server finds the subject's next
    /// message by direct get from sequence 1 (what jetway's list asks), and
    /// from the stream's first sequence.
    pub found_from_seq_1: bool,
    pub found_from_first_seq: bool,
    /// Dead letters on the first page of jetway's list route then.
    pub listed_after_first: usize,
    /// Messages still in the stream after the second call.
    pub left_in_stream: u64,
}

impl Probe {
    fn complete(&self) -> bool {
        self.replayed == self.dead_letters as u64
            && self.left_in_stream == 0
            && self.remaining_answered_first == self.in_stream_after_first
    }
}

impl ReplayResult {
    fn peak_mib(&self) -> f64 {
        self.peak_rss_sampled_kib.max(self.peak_rss_hwm_kib) as f64 / 1024.0
    }

    fn complete(&self) -> bool {
        self.endpoint_distinct == self.dead_letters
            && self.failed == 0
            && self.remaining == 0
            && self.dlq_left == 0
            && self.listed_after == 0
    }

    pub fn targets(&self) -> Vec<Target> {
        vec![target(
            format!(
                "peak RSS replaying {} dead letters of {} (issue 18)",
                self.dead_letters,
                size(self.payload)
            ),
            self.peak_mib(),
            48.0,
            "max",
            "MiB",
        )]
    }

    pub fn checks(&self) -> Vec<Target> {
        let mut every = target(
            "replay: every dead letter delivered, DLQ empty (issue 18)".into(),
            self.endpoint_distinct as f64 / self.dead_letters.max(1) as f64,
            1.0,
            "min",
            "x",
        );
        every.pass = self.complete();
        let mut same = target(
            "replay: bench-written dead letters have jetway's headers".into(),
            if self.same_headers { 1.0 } else { 0.0 },
            1.0,
            "min",
            "x",
        );
        same.pass = self.same_headers;
        let p = &self.probe;
        let mut probe = target(
            format!(
                "replay: a DLQ of one subscription alone ({} dead letters) replayed in two calls, in full (issue 18)",
                p.dead_letters
            ),
            p.replayed as f64 / p.dead_letters.max(1) as f64,
            1.0,
            "min",
            "x",
        );
        probe.pass = p.complete();
        vec![every, same, probe]
    }

    pub fn rows(&self, s: &mut String) {
        row(
            s,
            &format!(
                "dead-letter replay, {} x {} to a 200 endpoint, concurrency {} ({} calls of limit {})",
                self.dead_letters,
                size(self.payload),
                self.concurrency,
                self.calls,
                self.limit_per_call
            ),
            &format!("{:.0}/s", self.replay_rate),
            &format!(
                "delivery of {} such messages, same subscription {:.0}/s",
                self.delivered_messages, self.delivery_rate
            ),
            Some(self.ratio),
            "(info)",
            None,
        );
        row(
            s,
            "peak RSS during the replay (VmRSS every 100 ms / VmHWM)",
            &format!(
                "{:.1} / {:.1} MiB",
                self.peak_rss_sampled_kib as f64 / 1024.0,
                self.peak_rss_hwm_kib as f64 / 1024.0
            ),
            &format!("before it {:.1} MiB", self.rss_before_kib as f64 / 1024.0),
            None,
            "<= 48 MiB",
            Some(self.peak_mib() <= 48.0),
        );
        row(
            s,
            &format!(
                "replayed: distinct deliveries at the endpoint ({} requests), dead letters left",
                self.endpoint_requests
            ),
            &format!("{} / {} left", self.endpoint_distinct, self.dlq_left),
            &format!(
                "{} dead letters ({} by jetway, {} written by the bench{}; {} of another app between them)",
                self.dead_letters,
                self.jetway_made,
                self.bench_written,
                if self.same_headers {
                    ", same headers"
                } else {
                    ", **other headers**"
                },
                self.other_written
            ),
            None,
            "all, none left",
            Some(self.complete()),
        );
        let p = &self.probe;
        row(
            s,
            &format!(
                "replay of a DLQ holding one subscription's dead letters alone, `limit` {} then the rest: answered `remaining` after the first call / in the stream then; replayed in all; left",
                p.first_limit
            ),
            &format!(
                "{} / {}; {}; {} left",
                p.remaining_answered_first, p.in_stream_after_first, p.replayed, p.left_in_stream
            ),
            &format!("{} dead letters", p.dead_letters),
            None,
            "exact, all, 0",
            Some(p.complete()),
        );
    }
}

fn yaml(b: &Bench, sink: &Sink) -> String {
    format!(
        "app_id: {APP}\n\
         shutdown_grace: 10s\n\
         log: {{ format: text, level: info }}\n\
         nats: {{ url: \"{}\" }}\n\
         streams:\n\
         \x20 - {{ name: {STREAM}, subjects: [\"rpl.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         subscriptions:\n\
         \x20 - {{ name: {SUBSCRIPTION}, subject: \"{SUBJECT}\", stream: {STREAM}, endpoint: \"{}\", concurrency: {CONCURRENCY}, timeout: 10s }}\n\
         \x20 - {{ name: {PROBE}, subject: \"rpl.probe\", stream: {STREAM}, endpoint: \"{}\", concurrency: {CONCURRENCY}, timeout: 10s }}\n",
        b.nats.url(),
        sink.url("/deliver"),
        sink.url("/deliver"),
    )
}

fn dlq_subject(subscription: &str) -> String {
    format!("jetway.dlq.{APP}.{subscription}")
}

/// Dead letters of the subscription in the stream, as the server counts.
async fn dlq_count(js: &async_nats::jetstream::Context) -> Res<u64> {
    use futures::TryStreamExt;
    let stream = js.get_stream(DLQ).await.ctx("the dead-letter stream")?;
    let subject = dlq_subject(SUBSCRIPTION);
    let mut subjects = stream
        .info_with_subjects(&subject)
        .await
        .ctx("dead-letter subjects")?;
    let mut n = 0;
    while let Some((s, count)) = subjects.try_next().await.ctx("dead-letter subjects")? {
        if s == subject {
            n += count as u64;
        }
    }
    Ok(n)
}

/// A page of the list route.
async fn dead_letters(side: &Sidecar, after: u64, limit: usize) -> Res<Vec<serde_json::Value>> {
    let path = format!("/v1/dead-letters/{SUBSCRIPTION}?limit={limit}&after={after}");
    let (status, page) = side.call(reqwest::Method::GET, &path, None).await?;
    if status != 200 {
        return Err(format!("GET {path} answered {status}: {page}"));
    }
    Ok(page["items"].as_array().cloned().unwrap_or_default())
}

fn header_names(item: &serde_json::Value) -> BTreeSet<String> {
    item["headers"]
        .as_object()
        .map(|h| h.keys().map(|k| k.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

/// Lets the subscription dead-letter `JETWAY_MADE` messages (the endpoint
/// answers 400); returns them as the list route shows them.
async fn jetway_made(b: &Bench, side: &Sidecar, sink: &Sink) -> Res<Vec<serde_json::Value>> {
    sink.answer(400);
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    crate::load::backlog(&b.js, SUBJECT, payload, JETWAY_MADE).await?;
    side.resume(SUBSCRIPTION).await?;
    let until = Instant::now() + Duration::from_secs(60);
    let items = loop {
        let items = dead_letters(side, 0, 1000).await?;
        if items.len() >= JETWAY_MADE {
            break items;
        }
        if Instant::now() > until {
            return Err(format!(
                "only {} of {JETWAY_MADE} messages dead-lettered within 60 s; jetway log:\n{}",
                items.len(),
                side.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    side.pause(SUBSCRIPTION).await?;
    sink.answer(200);
    Ok(items)
}

/// One dead letter to write: its subject, the consumer it came from, the
/// sequence of its original.
type Letter = (String, String, u64);

/// The failure jetway recorded on its own dead letter `model`.
fn failure_of(model: &serde_json::Value) -> Failure {
    Failure {
        reason: Reason::Rejected,
        status: model["status"].as_u64().and_then(|s| u16::try_from(s).ok()),
        error: model["error"].as_str().unwrap_or("HTTP 400").to_string(),
        attempts: model["attempts"].as_u64().unwrap_or(1),
    }
}

/// `count` dead letters of `subscription` with originals numbered from
/// `first_seq`, and, when `other_every` is set, one of another app's
/// before each `other_every`-th.
fn letters(
    subscription: &str,
    first_seq: u64,
    count: usize,
    other_every: Option<usize>,
) -> Vec<Letter> {
    let mut out = Vec::with_capacity(count + count / other_every.unwrap_or(usize::MAX).max(1) + 1);
    for i in 0..count {
        if other_every.is_some_and(|every| i % every == 0) {
            out.push((OTHER_SUBJECT.into(), "bench-other-s".into(), i as u64 + 1));
        }
        out.push((
            dlq_subject(subscription),
            format!("{APP}-{subscription}"),
            first_seq + i as u64,
        ));
    }
    out
}

/// Writes the dead letters the way `DeadLetters::store` does, many PubAcks
/// in flight.
async fn write_dead_letters(
    js: &async_nats::jetstream::Context,
    failure: &Failure,
    letters: Vec<Letter>,
) -> Res<()> {
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let results: Vec<Res<()>> = futures::stream::iter(letters)
        .map(|(subject, consumer, seq)| {
            let env = Envelope {
                subject: SUBJECT.into(),
                stream: STREAM.into(),
                sequence: seq,
                attempt: failure.attempts,
                published: time::OffsetDateTime::now_utc(),
                headers: async_nats::HeaderMap::new(),
                payload: payload.clone(),
            };
            let headers =
                DeadLetters::message_headers(&env, failure, &format!("{STREAM}:{seq}:{consumer}"));
            async move {
                js.publish_with_headers(subject, headers, env.payload)
                    .await
                    .ctx("writing a dead letter")?
                    .await
                    .ctx("PubAck of a dead letter")?;
                Ok(())
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn dlq_messages(js: &async_nats::jetstream::Context) -> Res<u64> {
    Ok(js
        .get_stream(DLQ)
        .await
        .ctx("the dead-letter stream")?
        .info()
        .await
        .ctx("dead-letter stream info")?
        .state
        .messages)
}

/// Whether the server finds a message on `subject` at or after `seq`.
async fn found(js: &async_nats::jetstream::Context, subject: &str, seq: u64) -> Res<bool> {
    let stream = js.get_stream(DLQ).await.ctx("the dead-letter stream")?;
    Ok(stream
        .raw_message_builder()
        .sequence(seq)
        .next_by_subject(subject.to_string())
        .send()
        .await
        .is_ok())
}

/// Replays `PROBE_LETTERS` dead letters of a subscription alone in the
/// (otherwise empty) DLQ in two calls, then empties the stream again.
async fn probe(b: &Bench, side: &Sidecar, sink: &Sink, failure: &Failure) -> Res<Probe> {
    let base = dlq_messages(&b.js).await?;
    if base != 0 {
        return Err(format!("the DLQ holds {base} messages before the probe"));
    }
    write_dead_letters(&b.js, failure, letters(PROBE, 1, PROBE_LETTERS, None)).await?;
    sink.reset();
    let path = format!("/v1/dead-letters/{PROBE}/replay");
    let first_limit = PROBE_LETTERS / 2;
    let mut answers = Vec::new();
    let mut checks = Vec::new();
    for body in [Some(json!({ "limit": first_limit })), None] {
        let (status, answer) = side
            .call(reqwest::Method::POST, &path, body.as_ref())
            .await?;
        if status != 200 {
            return Err(format!("POST {path} answered {status}: {answer}"));
        }
        answers.push(answer);
        if checks.is_empty() {
            let first =
                b.js.get_stream(DLQ)
                    .await
                    .ctx("the dead-letter stream")?
                    .info()
                    .await
                    .ctx("dead-letter stream info")?
                    .state
                    .first_sequence;
            let subject = dlq_subject(PROBE);
            checks.push(dlq_messages(&b.js).await?);
            checks.push(found(&b.js, &subject, 1).await? as u64);
            checks.push(found(&b.js, &subject, first).await? as u64);
            let path = format!("/v1/dead-letters/{PROBE}?limit=100");
            let (_, page) = side.call(reqwest::Method::GET, &path, None).await?;
            checks.push(page["items"].as_array().map(Vec::len).unwrap_or(0) as u64);
        }
    }
    let n = |i: usize, k: &str| answers[i][k].as_u64().unwrap_or(0);
    let probe = Probe {
        dead_letters: PROBE_LETTERS,
        first_limit,
        replayed: n(0, "replayed") + n(1, "replayed"),
        failed: n(0, "failed") + n(1, "failed"),
        remaining_answered_first: n(0, "remaining"),
        in_stream_after_first: checks[0],
        remaining_answered_second: n(1, "remaining"),
        found_from_seq_1: checks[1] == 1,
        found_from_first_seq: checks[2] == 1,
        listed_after_first: checks[3] as usize,
        left_in_stream: dlq_messages(&b.js).await?,
    };
    b.purge(DLQ).await?;
    eprintln!(
        "    probe, {PROBE_LETTERS} dead letters of one subscription alone, replayed {first_limit} then the rest: answered remaining {} with {} in the stream (listed {}; next by subject from seq 1: {}, from the first seq: {}); then replayed in all {}, failed {}, answered remaining {}, {} left in the stream",
        probe.remaining_answered_first,
        probe.in_stream_after_first,
        probe.listed_after_first,
        if probe.found_from_seq_1 { "found" } else { "NOT FOUND" },
        if probe.found_from_first_seq { "found" } else { "NOT FOUND" },
        probe.replayed,
        probe.failed,
        probe.remaining_answered_second,
        probe.left_in_stream
    );
    Ok(probe)
}

/// `(dead letters, messages delivered first, limit per replay call)`;
/// `JETWAY_BENCH_REPLAY=N,M,L` sets them (an experiment).
fn sizes(quick: bool) -> (usize, usize, usize) {
    let given: Vec<usize> = std::env::var("JETWAY_BENCH_REPLAY")
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    match given[..] {
        [n, m, l] if n > JETWAY_MADE && l > 0 => (n, m, l),
        _ if quick => (2_000, 1_000, 500),
        _ => (100_000, 20_000, 10_000),
    }
}

pub(crate) async fn run(b: &Bench, r: &mut crate::report::Results) -> Res<()> {
    let (total, delivered_n, limit) = sizes(b.plan.quick);
    eprintln!(
        "  replay (issue 18): {total} dead letters of {PAYLOAD} B, against delivering {delivered_n} such messages"
    );
    let sink = Sink::start().await?;
    let side = Sidecar::start(&yaml(b, &sink)).await?;
    side.pause(SUBSCRIPTION).await?;
    let payload = bytes::Bytes::from(vec![b'd'; PAYLOAD]);
    let delivered = drain(
        &b.js,
        &side,
        &sink,
        SUBSCRIPTION,
        SUBJECT,
        payload,
        delivered_n,
    )
    .await?;
    let delivery_rate = delivered.run.rate();
    eprintln!("    delivery {delivery_rate:.0}/s; filling the DLQ");
    let probe = probe(
        b,
        &side,
        &sink,
        &Failure {
            reason: Reason::Rejected,
            status: Some(400),
            error: "HTTP 400".into(),
            attempts: 1,
        },
    )
    .await?;

    let made = jetway_made(b, &side, &sink).await?;
    let model = made.first().ok_or("no dead letter made by jetway")?;
    let failure = failure_of(model);
    let last_made = made
        .iter()
        .filter_map(|i| i["dlq_sequence"].as_u64())
        .max()
        .ok_or("dead letters without a sequence")?;
    b.purge(STREAM).await?;
    let first_seq =
        b.js.get_stream(STREAM)
            .await
            .ctx("the replay stream")?
            .cached_info()
            .state
            .last_sequence
            + 1;
    let bench_written = total - made.len();
    let to_write = letters(SUBSCRIPTION, first_seq, bench_written, Some(OTHER_EVERY));
    let other_written = to_write.len() - bench_written;
    let t0 = Instant::now();
    write_dead_letters(&b.js, &failure, to_write).await?;
    let fill_s = t0.elapsed().as_secs_f64();
    let written = dead_letters(&side, last_made, 1).await?;
    let (jetway_names, bench_names) = (
        header_names(model),
        header_names(
            written
                .first()
                .ok_or("no bench-written dead letter listed")?,
        ),
    );
    let header_difference = format!(
        "only jetway's: {:?}; only the bench's: {:?}",
        jetway_names.difference(&bench_names).collect::<Vec<_>>(),
        bench_names.difference(&jetway_names).collect::<Vec<_>>()
    );
    let same_headers = jetway_names == bench_names;
    let before = dlq_count(&b.js).await?;
    if before != total as u64 {
        return Err(format!("the DLQ holds {before} dead letters, not {total}"));
    }
    eprintln!(
        "    {bench_written} dead letters (and {other_written} of another app) written in {fill_s:.1} s beside jetway's {}; headers {}; replaying {limit} per call",
        made.len(),
        if same_headers { "the same" } else { "DIFFER" }
    );

    let pid = side.pid()?;
    sink.reset();
    sink.track_keys(true);
    procs::reset_peak(pid)?;
    let rss_before = usage(pid)?.rss_kib;
    let sampler = RssSampler::start(pid, SAMPLE_EVERY);
    let t0 = Instant::now();
    let (mut calls, mut replayed, mut failed, mut remaining) = (0usize, 0u64, 0u64, u64::MAX);
    let max_calls = total / limit * 2 + 10;
    while remaining > 0 {
        let path = format!("/v1/dead-letters/{SUBSCRIPTION}/replay");
        let (status, answer) = side
            .call(
                reqwest::Method::POST,
                &path,
                Some(&json!({ "limit": limit })),
            )
            .await?;
        if status != 200 {
            return Err(format!("POST {path} answered {status}: {answer}"));
        }
        calls += 1;
        let n = |k: &str| answer[k].as_u64().unwrap_or(0);
        replayed += n("replayed");
        failed += n("failed");
        remaining = answer["remaining"]
            .as_u64()
            .ok_or_else(|| format!("a replay answer without `remaining`: {answer}"))?;
        if n("replayed") + n("failed") == 0 && remaining > 0 {
            return Err(format!("a replay call took nothing with {remaining} left"));
        }
        if calls > max_calls {
            return Err(format!("{calls} replay calls and {remaining} still left"));
        }
    }
    let replay_s = t0.elapsed().as_secs_f64();
    let samples = sampler.finish().await;
    let hwm = usage(pid)?.hwm_kib;
    sink.track_keys(false);
    let dlq_left = dlq_count(&b.js).await?;
    let state =
        b.js.get_stream(DLQ)
            .await
            .ctx("the dead-letter stream")?
            .info()
            .await
            .ctx("dead-letter stream info")?
            .state
            .clone();
    eprintln!(
        "    DLQ stream after: {} messages, first {} last {}, {} deleted, {} subjects",
        state.messages,
        state.first_sequence,
        state.last_sequence,
        state.deleted_count.unwrap_or(0),
        state.subjects_count
    );
    let listed_after = dead_letters(&side, 0, 1).await?.len();
    side.stop().await;
    let result = ReplayResult {
        dead_letters: total,
        payload: PAYLOAD,
        concurrency: CONCURRENCY,
        jetway_made: made.len(),
        bench_written,
        same_headers,
        header_difference,
        other_written,
        fill_s,
        delivered_messages: delivered_n,
        delivery_rate,
        limit_per_call: limit,
        calls,
        replay_s,
        replay_rate: replayed as f64 / replay_s,
        ratio: replayed as f64 / replay_s / delivery_rate,
        replayed,
        failed,
        remaining,
        endpoint_requests: sink.count(),
        endpoint_distinct: sink.distinct_keys(),
        dlq_left,
        listed_after,
        rss_before_kib: rss_before,
        peak_rss_sampled_kib: samples.iter().copied().max().unwrap_or(0),
        peak_rss_hwm_kib: hwm,
        sample_every_ms: SAMPLE_EVERY.as_millis() as u64,
        rss_samples_kib: samples,
        probe,
    };
    eprintln!(
        "    replay {:.0}/s ({} in {:.1} s, {} calls) vs delivery {:.0}/s: ratio {:.2}; peak RSS {:.1} MiB sampled, {:.1} MiB VmHWM (before {:.1}); endpoint {} requests, {} distinct; failed {}, left {}",
        result.replay_rate,
        replayed,
        replay_s,
        calls,
        delivery_rate,
        result.ratio,
        result.peak_rss_sampled_kib as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        result.endpoint_requests,
        result.endpoint_distinct,
        failed,
        result.dlq_left
    );
    r.replay = Some(result);
    Ok(())
}
