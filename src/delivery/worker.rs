//! The worker of a subscription: the pull loop, the holds (messages taken
//! from JetStream) and the slots (requests at the app), and the task of each
//! message, which keeps it alive in JetStream while it waits and while the
//! endpoint works on it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::AckKind};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use super::attempt::{attempt, envelope, nak};
use super::subscription::InFlight;
use super::{ack_wait, puller, Delivery, Subscription, HAND_BACK_DELAY};
use crate::telemetry::tracer;

/// First and longest wait before pulling again after a failed pull.
const FIRST_FETCH_DELAY: Duration = Duration::from_millis(100);
const MAX_FETCH_DELAY: Duration = Duration::from_secs(2);

impl Delivery {
    /// The worker of one subscription: pull as many as may be held, hand
    /// each message to its own task.
    pub(super) async fn run(self: Arc<Self>, sub: Arc<Subscription>) {
        // Nothing is pulled before the consumer is in place, nor while its
        // config conflicts with the subscription's.
        let consumer = {
            let mut state = sub.consumer.subscribe();
            tokio::select! {
                ready = state.wait_for(|c| c.ready().is_some()) => match ready {
                    Ok(c) => c.ready().cloned(),
                    Err(_) => None,
                },
                _ = self.stop.cancelled() => None,
            }
        };
        let Some(consumer) = consumer else {
            return;
        };
        // Slots bound the requests at the app; holds (in the puller) bound
        // the messages this sidecar has taken from JetStream: a look-ahead,
        // so the next message is already here when a slot frees. Waiting
        // ones are kept alive with in-progress acks.
        let concurrency = sub.config.effective_concurrency();
        let slots = Arc::new(Semaphore::new(concurrency));
        let sizes = puller::Sizes::new(concurrency, sub.config.ordered);
        let deliveries = TaskTracker::new();
        let mut fetch_delay = FIRST_FETCH_DELAY;
        let mut puller = loop {
            match puller::Puller::new(self.js.clone(), consumer.clone(), sizes).await {
                Ok(puller) => break puller,
                Err(e) => {
                    tracing::warn!(subscription = sub.name(), error = %e, "cannot subscribe for pulls; retrying");
                    if !self.back_off(&mut fetch_delay).await {
                        return;
                    }
                }
            }
        };
        loop {
            if !puller.is_open() {
                if !self.wait_until_deliverable(&sub).await {
                    break;
                }
                let free = tokio::select! {
                    free = puller.free_holds() => match free {
                        Some(free) => free,
                        None => break,
                    },
                    _ = self.stop.cancelled() => break,
                };
                if let Err(e) = puller.request(free).await {
                    tracing::debug!(subscription = sub.name(), error = %e, "pull request failed; retrying");
                    if !self.back_off(&mut fetch_delay).await {
                        break;
                    }
                    continue;
                }
            }
            let pulled = tokio::select! {
                pulled = puller.next() => pulled,
                _ = self.stop.cancelled() => break,
            };
            match pulled {
                puller::Pulled::Message(msg, hold) => {
                    fetch_delay = FIRST_FETCH_DELAY;
                    // Boxed: the task then moves a pointer, not the whole
                    // state machine, on its way into the runtime.
                    let delivery =
                        Box::pin(self.clone().deliver(sub.clone(), *msg, hold, slots.clone()));
                    deliveries.spawn(delivery);
                }
                puller::Pulled::Ended(None) => fetch_delay = FIRST_FETCH_DELAY,
                puller::Pulled::Ended(Some(why)) => {
                    tracing::debug!(subscription = sub.name(), reason = %why, "pull ended early; pulling again");
                    if !self.back_off(&mut fetch_delay).await {
                        break;
                    }
                }
                puller::Pulled::ConsumerGone(why) => {
                    // Looked up now rather than at the next refresh.
                    tracing::debug!(subscription = sub.name(), reason = %why, "the consumer may be gone; looking it up");
                    self.look_up_consumers.notify_one();
                    if !self.back_off(&mut fetch_delay).await {
                        break;
                    }
                }
                puller::Pulled::Closed => {
                    tracing::warn!(
                        subscription = sub.name(),
                        "pull subscription closed; delivery stops"
                    );
                    break;
                }
            }
        }
        // Messages of an open request still arriving go straight back.
        let _ = tokio::time::timeout(puller.drain_wait(), async {
            while puller.is_open() {
                match puller.next().await {
                    puller::Pulled::Message(msg, _hold) => nak(&msg, None).await,
                    _ => break,
                }
            }
        })
        .await;
        deliveries.close();
        deliveries.wait().await;
    }

    /// Waits `delay` before pulling again and doubles it (up to
    /// `MAX_FETCH_DELAY`). `false` when stopping.
    pub(super) async fn back_off(&self, delay: &mut Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(*delay) => {}
            _ = self.stop.cancelled() => return false,
        }
        *delay = (*delay * 2).min(MAX_FETCH_DELAY);
        true
    }

    /// One message, one attempt, one decision. `_hold` counts it as taken
    /// from JetStream; it waits for one of `slots` before the app sees it.
    pub(super) async fn deliver(
        self: Arc<Self>,
        sub: Arc<Subscription>,
        mut msg: jetstream::Message,
        _hold: puller::Hold,
        slots: Arc<Semaphore>,
    ) {
        crate::memory::touch();
        let env = match envelope(&mut msg) {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(subscription = sub.name(), error = %e, "message without JetStream metadata; leaving it to redelivery");
                return;
            }
        };
        if self.stop.is_cancelled() {
            // Not tried; another replica takes it at once.
            nak(&msg, None).await;
            return;
        }
        // One timer, inside this task (no allocation), re-armed after each
        // in-progress ack.
        let every = ack_wait(&sub.config) / 3;
        let progress = tokio::time::sleep(every);
        tokio::pin!(progress);
        // Wait for a free slot, keeping the message alive meanwhile.
        let _slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => loop {
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => break slot,
                        Err(_) => return,
                    },
                    _ = &mut progress => {
                        progress.as_mut().reset(tokio::time::Instant::now() + every);
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::debug!(subscription = sub.name(), error = %e, "in-progress ack failed");
                        }
                    }
                    _ = self.stop.cancelled() => {
                        // Not tried; another replica takes it at once.
                        nak(&msg, None).await;
                        return;
                    }
                }
            },
        };
        if !self.deliverable(&sub) {
            // Arrived in a pull that was open when the app went down, its
            // health check failed or the subscription was paused: not tried.
            let (trace_id, span_id) = tracer::log_ids(&env.headers);
            tracing::debug!(
                subscription = sub.name(),
                subject = %env.subject,
                stream = %env.stream,
                seq = env.sequence,
                attempt = env.attempt,
                idempotency_key = %env.idempotency_key(),
                trace_id = trace_id.map(tracing::field::display),
                span_id = span_id.map(tracing::field::display),
                "not deliverable now; handed back"
            );
            nak(&msg, Some(HAND_BACK_DELAY)).await;
            return;
        }
        let _in_flight = InFlight::new(&sub);
        let span = self.process_span(&sub, &env);
        let started = std::time::Instant::now();
        // The attempt's deadline shares the in-progress timer: it fires for
        // whichever comes first (one timer per delivery, not two).
        let deadline = tokio::time::Instant::now() + sub.config.timeout;
        if deadline < progress.deadline() {
            progress.as_mut().reset(deadline);
        }
        let answer = {
            // Boxed: the spawned task stays small while it waits for a slot.
            let mut send = Box::pin(self.send(&sub, self.request(&sub, &env, &span)));
            loop {
                tokio::select! {
                    answer = &mut send => break Some(answer),
                    _ = &mut progress => {
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            break None;
                        }
                        progress.as_mut().reset((now + every).min(deadline));
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::debug!(subscription = sub.name(), error = %e, "in-progress ack failed");
                        }
                    }
                    _ = self.abort.cancelled() => {
                        nak(&msg, None).await;
                        return;
                    }
                }
            }
        };
        let attempt = attempt(&sub, started, answer);
        Box::pin(self.settle(&sub, &msg, &env, attempt, span)).await;
    }
}
