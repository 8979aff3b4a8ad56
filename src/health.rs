//! Liveness and readiness (SPEC section 7): what `/readyz` reports and why.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The facts `/readyz` is made of; set by the NATS connection, provisioning,
/// delivery and shutdown, read by the health routes and the publish path.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    provisioned: AtomicBool,
    shutting_down: AtomicBool,
    /// Subscriptions that cannot run (e.g. a consumer config conflict),
    /// by name, with the reason.
    blocked: Mutex<BTreeMap<String, String>>,
}

impl Health {
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::SeqCst);
    }
    pub fn set_provisioned(&self) {
        self.provisioned.store(true, Ordering::SeqCst);
    }
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Marks a subscription as unable to run (`Some(reason)`) or clears it.
    pub fn set_blocked(&self, subscription: &str, reason: Option<String>) {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(reason) => blocked.insert(subscription.to_string(), reason),
            None => blocked.remove(subscription),
        };
    }

    /// `Ok` when ready, else the reason, for the 503 body.
    pub fn readiness(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err("shutting down".into());
        }
        if !self.connected.load(Ordering::SeqCst) {
            return Err("not connected to NATS".into());
        }
        if !self.provisioned.load(Ordering::SeqCst) {
            return Err("streams and consumers are not in place yet".into());
        }
        let blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.is_empty() {
            Ok(())
        } else {
            Err(blocked.values().cloned().collect::<Vec<_>>().join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_connected_provisioned_and_not_stopping() {
        let h = Health::default();
        assert_eq!(h.readiness(), Err("not connected to NATS".into()));
        h.set_connected(true);
        assert_eq!(
            h.readiness(),
            Err("streams and consumers are not in place yet".into())
        );
        h.set_provisioned();
        assert_eq!(h.readiness(), Ok(()));
        h.begin_shutdown();
        assert_eq!(h.readiness(), Err("shutting down".into()));
    }

    #[test]
    fn a_blocked_subscription_is_named_until_cleared() {
        let h = Health::default();
        h.set_connected(true);
        h.set_provisioned();
        h.set_blocked("orders", Some("subscription orders: conflict".into()));
        assert_eq!(h.readiness(), Err("subscription orders: conflict".into()));
        h.set_blocked("orders", None);
        assert_eq!(h.readiness(), Ok(()));
    }
}
