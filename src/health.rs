//! Liveness and readiness (SPEC section 7): what `/readyz` reports and why.

use std::sync::atomic::{AtomicBool, Ordering};

/// The facts `/readyz` is made of; set by the NATS connection, provisioning
/// and shutdown, read by the health routes and the publish path.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    provisioned: AtomicBool,
    shutting_down: AtomicBool,
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

    /// `Ok` when ready, else the reason, for the 503 body.
    pub fn readiness(&self) -> Result<(), &'static str> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err("shutting down")
        } else if !self.connected.load(Ordering::SeqCst) {
            Err("not connected to NATS")
        } else if !self.provisioned.load(Ordering::SeqCst) {
            Err("streams and consumers are not in place yet")
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_connected_provisioned_and_not_stopping() {
        let h = Health::default();
        assert_eq!(h.readiness(), Err("not connected to NATS"));
        h.set_connected(true);
        assert_eq!(
            h.readiness(),
            Err("streams and consumers are not in place yet")
        );
        h.set_provisioned();
        assert_eq!(h.readiness(), Ok(()));
        h.begin_shutdown();
        assert_eq!(h.readiness(), Err("shutting down"));
    }
}
