//! Replay (SPEC section 5): dead letters delivered again to their own
//! subscription's endpoint only, read one at a time as delivery slots free
//! up and delivered with the subscription's concurrency, so memory is
//! bounded by the deliveries in flight whatever the DLQ holds.
//!
//! The replay runs in a task of its own, not in the HTTP request: a client
//! that goes away only stops it taking new dead letters; the ones in flight
//! finish and are settled (removed if delivered, rewritten if not). One
//! replay of a subscription runs at a time; another waits for it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_nats::jetstream::message::StreamMessage;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::error_type;
use super::retry::Outcome;
use super::{Delivery, Subscription};
use crate::dead_letter::{self, DlqError, Failure};
use crate::envelope::Reason;

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every one, oldest first.
    All,
    /// At most this many, oldest first.
    Limit(usize),
    /// These, in this order.
    Sequences(Vec<u64>),
}

/// Result of a replay.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: usize,
    pub failed: usize,
    /// Dead letters of the subscription left after the replay.
    pub remaining: u64,
}

/// Counts of a replay under way.
#[derive(Default)]
struct Tally {
    replayed: AtomicUsize,
    failed: AtomicUsize,
}

impl Delivery {
    /// Delivers dead letters again to this subscription's endpoint only.
    /// Delivered ones leave the DLQ; failed ones stay, attempts raised.
    /// Dropping the returned future (the client went away) stops the
    /// replay after the deliveries in flight.
    pub async fn replay(
        self: &Arc<Self>,
        sub: &Arc<Subscription>,
        selection: Selection,
    ) -> Result<Replayed, DlqError> {
        let client_gone = CancellationToken::new();
        let _gone_on_drop = client_gone.clone().drop_guard();
        let run = self
            .replays
            .spawn(self.clone().run_replay(sub.clone(), selection, client_gone));
        run.await
            .map_err(|e| DlqError::Stream(format!("replay ended abnormally: {e}")))?
    }

    async fn run_replay(
        self: Arc<Self>,
        sub: Arc<Subscription>,
        selection: Selection,
        client_gone: CancellationToken,
    ) -> Result<Replayed, DlqError> {
        // Cancellation first: a replay asked for during shutdown, or whose
        // client is already gone, takes nothing.
        let _one_at_a_time = tokio::select! {
            biased;
            _ = client_gone.cancelled() => return Err(DlqError::Stream("client went away".into())),
            _ = self.stop.cancelled() => return Err(DlqError::Stream("shutting down".into())),
            lock = sub.replay_lock.lock() => lock,
        };
        let slots = Arc::new(Semaphore::new(sub.config.effective_concurrency()));
        let in_flight = TaskTracker::new();
        let tally = Arc::new(Tally::default());
        let taken = self
            .feed(&sub, selection, &slots, &in_flight, &tally, &client_gone)
            .await;
        if client_gone.is_cancelled() {
            tracing::info!(
                subscription = sub.name(),
                "replay client went away; finishing the deliveries in flight"
            );
        }
        in_flight.close();
        in_flight.wait().await;
        taken?;
        let replayed = tally.replayed.load(Ordering::SeqCst);
        let failed = tally.failed.load(Ordering::SeqCst);
        let remaining = self.dead_letters.count(sub.name()).await?;
        tracing::info!(
            subscription = sub.name(),
            replayed,
            failed,
            remaining,
            "replay done"
        );
        Ok(Replayed {
            replayed,
            failed,
            remaining,
        })
    }

    /// Takes the selected dead letters one page at a time and starts each
    /// delivery once a slot is free, until done, the client is gone or
    /// jetway stops.
    async fn feed(
        self: &Arc<Self>,
        sub: &Arc<Subscription>,
        selection: Selection,
        slots: &Arc<Semaphore>,
        in_flight: &TaskTracker,
        tally: &Arc<Tally>,
        client_gone: &CancellationToken,
    ) -> Result<(), DlqError> {
        let start = |msg: StreamMessage, slot: OwnedSemaphorePermit| {
            let (this, sub, tally) = (self.clone(), sub.clone(), tally.clone());
            in_flight.spawn(async move {
                let _slot = slot;
                let counter = if this.replay_one(&sub, msg).await {
                    &tally.replayed
                } else {
                    &tally.failed
                };
                counter.fetch_add(1, Ordering::SeqCst);
            });
        };
        let slot = || async {
            tokio::select! {
                biased;
                _ = client_gone.cancelled() => None,
                _ = self.stop.cancelled() => None,
                slot = slots.clone().acquire_owned() => slot.ok(),
            }
        };
        let limit = match selection {
            Selection::Sequences(sequences) => {
                let mut seen = HashSet::new();
                for seq in sequences {
                    // The same dead letter twice would be delivered twice
                    // at once.
                    if !seen.insert(seq) {
                        continue;
                    }
                    let Some(slot) = slot().await else {
                        return Ok(());
                    };
                    match self.dead_letters.get(sub.name(), seq).await {
                        Ok(msg) => start(msg, slot),
                        Err(DlqError::NotFound(_)) => {
                            tally.failed.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => return Err(e),
                    }
                }
                return Ok(());
            }
            Selection::All => usize::MAX,
            Selection::Limit(n) => n,
        };
        // Failed replays are stored again at the end of the DLQ: stop at
        // what was there when the replay began, so none comes round twice.
        let end = self.dead_letters.last_sequence().await?;
        // One dead letter read at a time, each handed to a delivery at once:
        // reading goes on while earlier ones are delivered, and memory holds
        // the deliveries in flight and nothing more.
        let mut after = 0;
        let mut taken = 0;
        while taken < limit {
            let Some(slot) = slot().await else {
                return Ok(());
            };
            let Some(msg) = self.dead_letters.next(sub.name(), after).await? else {
                break;
            };
            if msg.sequence > end {
                break;
            }
            after = msg.sequence;
            start(msg, slot);
            taken += 1;
        }
        Ok(())
    }

    pub(super) async fn replay_one(&self, sub: &Subscription, msg: StreamMessage) -> bool {
        let (env, old) = dead_letter::read(&msg);
        // Past the shutdown grace the attempt is dropped; the dead letter
        // stays as it was.
        let span = self.process_span(sub, &env);
        let attempt = tokio::select! {
            attempt = self.call(sub, &env, &span) => attempt,
            _ = self.abort.cancelled() => return false,
        };
        let delivered =
            matches!(attempt.outcome, Outcome::Status { code, .. } if (200..300).contains(&code));
        let key = env.idempotency_key();
        let (trace_id, span_id) = (
            span.trace_id().map(tracing::field::display),
            span.span_id().map(tracing::field::display),
        );
        if delivered {
            sub.metrics.success.inc();
            tracing::info!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, attempt = env.attempt, idempotency_key = %key, trace_id, span_id, dlq_seq = msg.sequence, "dead letter replayed");
            span.end("ack", attempt.status, None);
        } else {
            tracing::warn!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, attempt = env.attempt, idempotency_key = %key, trace_id, span_id, dlq_seq = msg.sequence, error = %attempt.error, "replay failed; the dead letter stays");
            span.end(
                "dead_letter",
                attempt.status,
                Some(&error_type(&attempt.outcome)),
            );
            // Keep it, with one more attempt recorded: store the rewrite,
            // then drop the old entry.
            let failure = Failure {
                reason: match attempt.outcome {
                    Outcome::Status { code, .. } if !sub.config.retry.retry_on.contains(&code) => {
                        Reason::Rejected
                    }
                    _ => old.reason,
                },
                status: attempt.status,
                error: attempt.error,
                attempts: old.attempts + 1,
            };
            let msg_id = format!(
                "replay:{}:{}",
                self.dead_letters.subject(sub.name()),
                msg.sequence
            );
            if let Err(e) = self
                .dead_letters
                .store(sub.name(), &env, &failure, &msg_id)
                .await
            {
                tracing::warn!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, idempotency_key = %key, trace_id, span_id, dlq_seq = msg.sequence, error = %e, "replay failed and the attempt count could not be raised");
                return false;
            }
        }
        if let Err(e) = self.dead_letters.remove(msg.sequence).await {
            tracing::warn!(subscription = sub.name(), dlq_seq = msg.sequence, error = %e, "cannot remove replayed dead letter");
        }
        delivered
    }
}
