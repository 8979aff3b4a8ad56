//! The pull side of a subscription: one inbox subscription for the life of
//! the worker, and pull requests sized by the holds that are free.
//!
//! `consumer.batch()` subscribes a new inbox for every pull (SUB, request,
//! UNSUB), which at low concurrency costs a round trip and three protocol
//! operations per message. Here one request is open at a time, and the next
//! goes out once at least half of what may be held is free, so a backlog is
//! taken in batches while a freed slot still finds a message waiting.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::BatchConfig, consumer::PullConsumer};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long the server keeps a pull request open.
pub const FETCH_WAIT: Duration = Duration::from_secs(2);
/// A request whose end the server never reported (lost in a reconnect)
/// counts as ended this long after it expired.
const LOST_AFTER: Duration = Duration::from_secs(5);

/// A message this sidecar has taken from JetStream; gives its hold back when
/// dropped.
pub struct Hold(Option<Arc<Semaphore>>);

impl Drop for Hold {
    fn drop(&mut self) {
        if let Some(holds) = self.0.take() {
            holds.add_permits(1);
        }
    }
}

/// What the open pull request produced.
pub enum Pulled {
    Message(Box<jetstream::Message>, Hold),
    /// The request ended before it was filled: expired (`None`), or ended
    /// by the server or lost (the reason).
    Ended(Option<String>),
    /// The subscription is gone (the client was closed).
    Closed,
}

/// How much a subscription may hold and request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Messages taken from JetStream and not yet settled, at most.
    pub held: usize,
    /// Largest pull request.
    pub max_request: usize,
    /// Free holds that make a new request worth sending.
    pub threshold: usize,
}

impl Sizes {
    /// `concurrency` in flight plus a look-ahead of as many again, at least
    /// `min_look_ahead`; requests of at least half of that. Ordered
    /// subscriptions (the consumer allows one unacknowledged message) ask
    /// for one at a time and hold one more.
    pub fn new(concurrency: usize, ordered: bool, min_look_ahead: usize) -> Sizes {
        if ordered {
            return Sizes {
                held: 2,
                max_request: 1,
                threshold: 1,
            };
        }
        let concurrency = concurrency.max(1);
        let held = concurrency + concurrency.max(min_look_ahead);
        Sizes {
            held,
            max_request: held,
            threshold: (held / 2).max(1),
        }
    }
}

struct Open {
    /// Messages of the request not received yet (their holds are taken).
    left: usize,
    lost_at: Instant,
}

pub struct Puller {
    consumer: PullConsumer,
    context: jetstream::Context,
    inbox: Subject,
    subscriber: Subscriber,
    holds: Arc<Semaphore>,
    sizes: Sizes,
    open: Option<Open>,
}

impl Puller {
    pub async fn new(
        context: jetstream::Context,
        consumer: PullConsumer,
        sizes: Sizes,
    ) -> Result<Puller, async_nats::SubscribeError> {
        let client = context.client();
        let inbox = Subject::from(client.new_inbox());
        let subscriber = client.subscribe(inbox.clone()).await?;
        Ok(Puller {
            consumer,
            context,
            inbox,
            subscriber,
            holds: Arc::new(Semaphore::new(sizes.held)),
            sizes,
            open: None,
        })
    }

    /// Whether a request is open (its messages may still come).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Waits until enough holds are free for a request. Cancel-safe.
    pub async fn free_holds(&self) -> Option<OwnedSemaphorePermit> {
        let mut permit = self
            .holds
            .clone()
            .acquire_many_owned(self.sizes.threshold as u32)
            .await
            .ok()?;
        while permit.num_permits() < self.sizes.max_request {
            match self.holds.clone().try_acquire_owned() {
                Ok(more) => permit.merge(more),
                Err(_) => break,
            }
        }
        Some(permit)
    }

    /// Asks for as many messages as `free` holds. On failure the holds are
    /// free again.
    pub async fn request(
        &mut self,
        free: OwnedSemaphorePermit,
    ) -> Result<(), async_nats::jetstream::consumer::pull::BatchRequestError> {
        let batch = free.num_permits();
        let config = BatchConfig {
            batch,
            expires: Some(FETCH_WAIT),
            ..Default::default()
        };
        self.consumer
            .request_batch(config, self.inbox.clone())
            .await?;
        free.forget();
        self.open = Some(Open {
            left: batch,
            lost_at: Instant::now() + FETCH_WAIT + LOST_AFTER,
        });
        Ok(())
    }

    /// The next message of the open request, or its end. Cancel-safe.
    pub async fn next(&mut self) -> Pulled {
        loop {
            let received = match self.open.as_ref().map(|o| o.lost_at) {
                Some(lost_at) => tokio::select! {
                    m = self.subscriber.next() => m,
                    _ = tokio::time::sleep_until(lost_at) => {
                        self.end();
                        return Pulled::Ended(Some("the server never ended the pull request".into()));
                    }
                },
                None => self.subscriber.next().await,
            };
            let Some(message) = received else {
                self.end();
                return Pulled::Closed;
            };
            match message.status {
                None | Some(StatusCode::OK) => {
                    let hold = match self.open.as_mut() {
                        Some(open) => {
                            open.left -= 1;
                            if open.left == 0 {
                                self.open = None;
                            }
                            Hold(Some(self.holds.clone()))
                        }
                        // Late, after its request was given up: delivered
                        // all the same, outside the count.
                        None => Hold(None),
                    };
                    let message = jetstream::Message {
                        message,
                        context: self.context.clone(),
                    };
                    return Pulled::Message(Box::new(message), hold);
                }
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
                    self.end();
                    return Pulled::Ended(None);
                }
                Some(status) => {
                    self.end();
                    let why = message.description.unwrap_or_default();
                    return Pulled::Ended(Some(format!(
                        "pull ended by the server: {status} {why}"
                    )));
                }
            }
        }
    }

    /// Gives back the holds of what the open request will not bring.
    fn end(&mut self) {
        if let Some(open) = self.open.take() {
            self.holds.add_permits(open.left);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn look_ahead_is_at_least_the_minimum_and_requests_at_least_half() {
        assert_eq!(
            Sizes::new(1, false, 16),
            Sizes {
                held: 17,
                max_request: 17,
                threshold: 8
            }
        );
        assert_eq!(
            Sizes::new(64, false, 16),
            Sizes {
                held: 128,
                max_request: 128,
                threshold: 64
            }
        );
        // A zero concurrency cannot stall the worker.
        assert!(Sizes::new(0, false, 0).threshold >= 1);
        // Ordered: never more than one request in flight at the server.
        let ordered = Sizes::new(8, true, 16);
        assert_eq!((ordered.max_request, ordered.threshold), (1, 1));
    }

    #[tokio::test]
    async fn a_hold_gives_its_permit_back_once() {
        let holds = Arc::new(Semaphore::new(0));
        drop(Hold(Some(holds.clone())));
        assert_eq!(holds.available_permits(), 1);
        drop(Hold(None));
        assert_eq!(holds.available_permits(), 1);
    }
}
