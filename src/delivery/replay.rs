//! Replay (SPEC section 5): dead letters delivered again to their own
//! subscription's endpoint only.

use async_nats::jetstream::message::StreamMessage;
use futures::StreamExt;
use serde::Serialize;

use super::retry::Outcome;
use super::{Delivery, Subscription};
use crate::dead_letter::{self, DlqError, Failure};
use crate::envelope::Reason;

/// Result of a replay.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: usize,
    pub failed: usize,
}

impl Delivery {
    /// Delivers dead letters again to this subscription's endpoint only.
    /// Delivered ones leave the DLQ; failed ones stay, attempts raised.
    pub async fn replay(
        &self,
        sub: &Subscription,
        sequences: Option<Vec<u64>>,
    ) -> Result<Replayed, DlqError> {
        let mut failed = 0;
        let mut messages = Vec::new();
        match sequences {
            Some(seqs) => {
                for seq in seqs {
                    match self.dead_letters.get(sub.name(), seq).await {
                        Ok(m) => messages.push(m),
                        Err(DlqError::NotFound(_)) => failed += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let mut after = 0;
                loop {
                    let (page, next) = self.dead_letters.list(sub.name(), after, 1000).await?;
                    messages.extend(page);
                    match next {
                        Some(n) => after = n,
                        None => break,
                    }
                }
            }
        }
        let results: Vec<bool> = futures::stream::iter(messages)
            .map(|m| self.replay_one(sub, m))
            .buffer_unordered(sub.config.effective_concurrency())
            .collect()
            .await;
        let replayed = results.iter().filter(|ok| **ok).count();
        Ok(Replayed {
            replayed,
            failed: failed + results.len() - replayed,
        })
    }

    pub(super) async fn replay_one(&self, sub: &Subscription, msg: StreamMessage) -> bool {
        let (env, old) = dead_letter::read(&msg);
        let attempt = self.call(sub, &env).await;
        let delivered =
            matches!(attempt.outcome, Outcome::Status { code, .. } if (200..300).contains(&code));
        if delivered {
            sub.metrics.success.inc();
        } else {
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
                tracing::warn!(subscription = sub.name(), dlq_seq = msg.sequence, error = %e, "replay failed and the attempt count could not be raised");
                return false;
            }
        }
        if let Err(e) = self.dead_letters.delete(sub.name(), msg.sequence).await {
            tracing::warn!(subscription = sub.name(), dlq_seq = msg.sequence, error = %e, "cannot remove replayed dead letter");
        }
        delivered
    }
}
