//! Whether the app can take deliveries: its health URL, the endpoint's
//! reachability, and the probing that resumes delivery once it answers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;

use super::{Delivery, Subscription};

/// Longest wait between probes of a down endpoint.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(2);

impl Delivery {
    pub(super) fn set_endpoint_up(&self, sub: &Subscription, up: bool) {
        let was = sub.endpoint_up.swap(up, Ordering::SeqCst);
        sub.metrics.endpoint_up.set(if up { 1.0 } else { 0.0 });
        if was && !up {
            tracing::warn!(subscription = sub.name(), endpoint = %sub.config.endpoint, "endpoint not reachable; pausing delivery until it answers");
        } else if !was && up {
            tracing::info!(
                subscription = sub.name(),
                "endpoint reachable again; resuming delivery"
            );
        }
    }

    /// Waits until the subscription may fetch: not paused, app healthy,
    /// endpoint reachable. `false` when stopping.
    pub(super) async fn wait_until_deliverable(&self, sub: &Subscription) -> bool {
        let mut paused = sub.paused.subscribe();
        let mut healthy = self.app_healthy.subscribe();
        let mut probe_delay = Duration::from_millis(100);
        loop {
            if self.stop.is_cancelled() {
                return false;
            }
            if *paused.borrow_and_update() {
                tokio::select! {
                    _ = paused.wait_for(|p| !*p) => {}
                    _ = self.stop.cancelled() => return false,
                }
                continue;
            }
            if !*healthy.borrow_and_update() {
                sub.metrics.endpoint_up.set(0.0);
                tokio::select! {
                    _ = healthy.wait_for(|h| *h) => {}
                    _ = self.stop.cancelled() => return false,
                }
                continue;
            }
            if !sub.endpoint_up.load(Ordering::SeqCst) {
                if probe(&sub.config.endpoint).await {
                    self.set_endpoint_up(sub, true);
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(probe_delay) => {}
                        _ = self.stop.cancelled() => return false,
                    }
                    probe_delay = (probe_delay * 2).min(MAX_PROBE_DELAY);
                }
                continue;
            }
            sub.metrics.endpoint_up.set(1.0);
            return true;
        }
    }

    /// Polls `app.health_url`; deliveries wait while it fails.
    pub(super) async fn watch_app_health(self: Arc<Self>, url: hyper::Uri) {
        let mut delay = Duration::from_millis(100);
        loop {
            let request = hyper::Request::get(url.clone()).body(Full::new(Bytes::new()));
            let healthy = match request {
                Ok(request) => matches!(
                    tokio::time::timeout(Duration::from_secs(2), self.http.request(request)).await,
                    Ok(Ok(response)) if response.status().is_success()
                ),
                Err(_) => false,
            };
            let changed = self
                .app_healthy
                .send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
            if changed {
                tracing::info!(healthy, %url, "app health changed");
                // At once, not when each worker next looks.
                for sub in &self.subscriptions {
                    let up = healthy && sub.endpoint_up.load(Ordering::SeqCst);
                    sub.metrics.endpoint_up.set(if up { 1.0 } else { 0.0 });
                }
            }
            let wait = if healthy {
                delay = Duration::from_millis(100);
                Duration::from_secs(1)
            } else {
                delay = (delay * 2).min(MAX_PROBE_DELAY);
                delay
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }
}

/// Whether anything accepts TCP connections at the endpoint's address.
pub(super) async fn probe(endpoint: &hyper::Uri) -> bool {
    let Some(host) = endpoint.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = endpoint.port_u16().unwrap_or(80);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}
