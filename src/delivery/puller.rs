//! The pull side of a subscription: one inbox subscription for the life of
//! the worker, and pull requests sized by the holds that are free.
//!
//! `consumer.batch()` subscribes a new inbox for every pull (SUB, request,
//! UNSUB), which at low concurrency costs a round trip and three protocol
//! operations per message. Here one request is open at a time, and the next
//! goes out once at least half of what may be held is free, so a backlog is
//! taken in batches while a freed slot still finds a message waiting.
//!
//! A request that found nothing is followed by an idle one: a single
//! message, open for `IDLE_WAIT`, with the server's idle heartbeats every
//! `IDLE_HEARTBEAT`, so an idle subscription costs a request every 30 s
//! instead of every 2 s, and a request lost in a reconnect or a server that
//! went silent is still noticed after a missed heartbeat. The first
//! message ends the idle request; the next one asks for the free holds
//! again. An idle request asks for one message only, so a subscription that
//! stops being deliverable while it is open (paused, app down) gets at most
//! one message it must hand back, and that one never bounces back into the
//! request it came from.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::BatchConfig, consumer::PullConsumer};
use async_nats::{StatusCode, Subject, Subscriber};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long the server keeps a pull request open while messages come.
pub const FETCH_WAIT: Duration = Duration::from_secs(2);
/// How long the server keeps an idle request (one message) open.
const IDLE_WAIT: Duration = Duration::from_secs(30);
/// How often the server reports an idle request is still open: at most
/// half of `IDLE_WAIT`, as the server requires; every heartbeat is a
/// message, so not more often than that.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(15);
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
    /// The server says the consumer may be gone: "Consumer Deleted" for an
    /// open request, no responders for a new one (the reason).
    ConsumerGone(String),
    /// The subscription is gone (the client was closed).
    Closed,
}

/// Bytes the look-ahead holds, about: as many messages as fit by the
/// average size of those received, from [`MIN_LOOK_AHEAD`] to
/// [`MAX_LOOK_AHEAD`]. Small messages get the whole look-ahead (a fast
/// endpoint never waits for a pull round trip); 1 MiB messages get 4.
pub const LOOK_AHEAD_BYTES: usize = 4 << 20;
/// Most messages held beyond those in flight.
pub const MAX_LOOK_AHEAD: usize = 128;
/// Fewest messages held beyond those in flight.
pub const MIN_LOOK_AHEAD: usize = 2;
/// The average size assumed before any message came: a look-ahead of 16,
/// which the first messages correct.
const FIRST_AVERAGE: usize = LOOK_AHEAD_BYTES / 16;

/// How much a subscription may hold and request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Deliveries in flight at most.
    pub concurrency: usize,
    /// Ordered: the consumer allows one unacknowledged message.
    pub ordered: bool,
}

/// The holds and requests for messages of one average size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Messages taken from JetStream and not yet settled, at most.
    pub held: usize,
    /// Free holds that make a new request worth sending: half the
    /// look-ahead, so when a request goes out the other half is still
    /// there for the slots that free up while it travels.
    pub threshold: usize,
}

impl Sizes {
    pub fn new(concurrency: usize, ordered: bool) -> Sizes {
        Sizes {
            concurrency: concurrency.max(1),
            ordered,
        }
    }

    /// `concurrency` in flight plus the look-ahead for messages of
    /// `average` bytes. Ordered subscriptions ask for one at a time and
    /// hold one more.
    pub fn window(&self, average: usize) -> Window {
        if self.ordered {
            return Window {
                held: 2,
                threshold: 1,
            };
        }
        let look_ahead = (LOOK_AHEAD_BYTES / average.max(1)).clamp(MIN_LOOK_AHEAD, MAX_LOOK_AHEAD);
        Window {
            held: self.concurrency + look_ahead,
            threshold: (look_ahead / 2).max(1),
        }
    }
}

struct Open {
    /// Messages of the request not received yet (their holds are taken).
    left: usize,
    /// Whether a message came for it.
    brought: bool,
    /// When it counts as lost if nothing more comes.
    lost_at: Instant,
    /// Heartbeats were asked for: each one moves `lost_at` on, up to
    /// `ends_at`.
    heartbeats: bool,
    /// Its expiry and a margin: lost by then whatever came.
    ends_at: Instant,
}

pub struct Puller {
    consumer: PullConsumer,
    context: jetstream::Context,
    inbox: Subject,
    subscriber: Subscriber,
    holds: Arc<Semaphore>,
    /// Holds the semaphore stands for now (held and free).
    capacity: usize,
    sizes: Sizes,
    /// Average size of the messages received (payload and headers), in
    /// bytes; the look-ahead follows it.
    average: usize,
    open: Option<Open>,
    /// The last request expired with nothing: the next one is idle.
    idle: bool,
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
            holds: Arc::new(Semaphore::new(sizes.window(FIRST_AVERAGE).held)),
            capacity: sizes.window(FIRST_AVERAGE).held,
            sizes,
            average: FIRST_AVERAGE,
            open: None,
            idle: false,
        })
    }

    /// Whether a request is open (its messages may still come).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Waits until enough holds are free for a request (one for an idle
    /// request). Cancel-safe.
    pub async fn free_holds(&mut self) -> Option<OwnedSemaphorePermit> {
        let window = self.sizes.window(self.average);
        self.resize(window.held);
        let (wanted, most) = if self.idle {
            (1, 1)
        } else {
            (window.threshold, window.held)
        };
        let mut permit = self
            .holds
            .clone()
            .acquire_many_owned(wanted as u32)
            .await
            .ok()?;
        while permit.num_permits() < most {
            match self.holds.clone().try_acquire_owned() {
                Ok(more) => permit.merge(more),
                Err(_) => break,
            }
        }
        Some(permit)
    }

    /// Makes the holds `held` in all: more at once; fewer as they are
    /// given back (only free ones can be taken away).
    fn resize(&mut self, held: usize) {
        if held > self.capacity {
            self.holds.add_permits(held - self.capacity);
            self.capacity = held;
        } else if held < self.capacity {
            self.capacity -= self.holds.forget_permits(self.capacity - held);
        }
    }

    /// Asks for as many messages as `free` holds. On failure the holds are
    /// free again.
    pub async fn request(
        &mut self,
        free: OwnedSemaphorePermit,
    ) -> Result<(), async_nats::jetstream::consumer::pull::BatchRequestError> {
        let batch = free.num_permits();
        let (expires, idle_heartbeat) = if self.idle {
            (IDLE_WAIT, IDLE_HEARTBEAT)
        } else {
            (FETCH_WAIT, Duration::ZERO)
        };
        let config = BatchConfig {
            batch,
            expires: Some(expires),
            idle_heartbeat,
            ..Default::default()
        };
        self.consumer
            .request_batch(config, self.inbox.clone())
            .await?;
        free.forget();
        let heartbeats = !idle_heartbeat.is_zero();
        let now = Instant::now();
        let ends_at = now + expires + LOST_AFTER;
        self.open = Some(Open {
            left: batch,
            brought: false,
            lost_at: if heartbeats {
                (now + heartbeats_missed()).min(ends_at)
            } else {
                ends_at
            },
            heartbeats,
            ends_at,
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
                        self.idle = false;
                        return Pulled::Ended(Some("the server went silent on the pull request".into()));
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
                    self.idle = false;
                    // A moving average over about the last eight.
                    self.average = (self.average * 7 + message.length) / 8;
                    let hold = match self.open.as_mut() {
                        Some(open) => {
                            open.brought = true;
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
                Some(StatusCode::IDLE_HEARTBEAT) => {
                    if let Some(open) = self.open.as_mut().filter(|o| o.heartbeats) {
                        open.lost_at = (Instant::now() + heartbeats_missed()).min(open.ends_at);
                    }
                    continue;
                }
                Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
                    // Expired: idle from now on if it brought nothing.
                    if let Some(open) = self.open.as_ref() {
                        self.idle = !open.brought;
                    }
                    self.end();
                    return Pulled::Ended(None);
                }
                Some(status) => {
                    self.end();
                    self.idle = false;
                    let why = message.description.unwrap_or_default();
                    let reason = format!("pull ended by the server: {status} {why}");
                    let gone = status == StatusCode::NO_RESPONDERS
                        || (status == StatusCode::REQUEST_TERMINATED
                            && why.eq_ignore_ascii_case("consumer deleted"));
                    return if gone {
                        Pulled::ConsumerGone(reason)
                    } else {
                        Pulled::Ended(Some(reason))
                    };
                }
            }
        }
    }

    /// How long to wait at shutdown for what the open request still
    /// brings: an active one ends within `FETCH_WAIT`; an idle one lives
    /// on, so only what is already on its way is waited for.
    pub fn drain_wait(&self) -> Duration {
        match &self.open {
            Some(open) if open.heartbeats => Duration::from_millis(250),
            _ => FETCH_WAIT,
        }
    }

    /// Gives back the holds of what the open request will not bring.
    fn end(&mut self) {
        if let Some(open) = self.open.take() {
            self.holds.add_permits(open.left);
        }
    }
}

/// Silence after which a request with heartbeats counts as lost: one
/// heartbeat missed by half its interval.
fn heartbeats_missed() -> Duration {
    IDLE_HEARTBEAT + IDLE_HEARTBEAT / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_look_ahead_follows_the_message_size() {
        let c16 = Sizes::new(16, false);
        // Small messages: the whole look-ahead, requests of half of it.
        assert_eq!(
            c16.window(256),
            Window {
                held: 16 + MAX_LOOK_AHEAD,
                threshold: MAX_LOOK_AHEAD / 2
            }
        );
        assert_eq!(c16.window(64 * 1024).held, 16 + 64);
        // Large ones: about LOOK_AHEAD_BYTES beyond those in flight.
        assert_eq!(c16.window(256 * 1024).held, 16 + 16);
        assert_eq!(
            c16.window(1024 * 1024),
            Window {
                held: 16 + 4,
                threshold: 2
            }
        );
        assert_eq!(c16.window(64 * 1024 * 1024).held, 16 + MIN_LOOK_AHEAD);
        // Before any message: 16.
        assert_eq!(c16.window(FIRST_AVERAGE).held, 16 + 16);
        // A zero concurrency or size cannot stall the worker.
        assert!(Sizes::new(0, false).window(0).threshold >= 1);
        assert!(Sizes::new(0, false).window(usize::MAX).threshold >= 1);
        // Ordered: never more than one request in flight at the server.
        assert_eq!(
            Sizes::new(8, true).window(256),
            Window {
                held: 2,
                threshold: 1
            }
        );
        // An idle request is told lost well before it would expire, and its
        // heartbeats are valid for the server (at most half the expiry).
        assert!(heartbeats_missed() < IDLE_WAIT);
        assert!(IDLE_HEARTBEAT * 2 <= IDLE_WAIT);
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
