//! A budget for log lines that an outage would repeat once per message.
//!
//! While NATS is away every publish fails with a 5xx, and a line per failure
//! would flood the log at the request rate. [`Throttle`] lets one line per
//! interval through at WARN; the others go to DEBUG (they still carry the
//! event's context, SPEC section 10), and the next WARN line says how many
//! were held back. One atomic compare-and-swap per call: cheaper than a
//! rate-limiting crate's token bucket, and nothing else here needs one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Throttle {
    epoch: Instant,
    interval_ms: u64,
    /// Milliseconds since `epoch` before which no WARN line goes out.
    next_ms: AtomicU64,
    /// Lines sent to DEBUG since the last WARN line.
    held_back: AtomicU64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            next_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(held_back)` when this line may go out at WARN (with the count of
    /// lines held back since the previous one), `None` when it goes to DEBUG.
    pub fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.admit_at(now)
    }

    fn admit_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        if now_ms >= next
            && self
                .next_ms
                .compare_exchange(
                    next,
                    now_ms.saturating_add(self.interval_ms),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_held_back() {
        let t = Throttle::new(Duration::from_secs(1));
        assert_eq!(t.admit_at(0), Some(0));
        assert_eq!(t.admit_at(10), None);
        assert_eq!(t.admit_at(999), None);
        assert_eq!(t.admit_at(1000), Some(2));
        assert_eq!(t.admit_at(1500), None);
        assert_eq!(t.admit_at(5000), Some(1));
        assert_eq!(t.admit_at(5001), None);
    }

    #[test]
    fn concurrent_callers_let_exactly_one_through() {
        // The one admitted caller reports the lines held back before its
        // swap; those after it stay counted for the next WARN line. Together
        // they are every other call: none is lost or counted twice.
        let t = std::sync::Arc::new(Throttle::new(Duration::from_secs(3600)));
        let admitted: Vec<u64> = (0..8)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || (0..1000).filter_map(|_| t.admit()).collect::<Vec<_>>())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect();
        assert_eq!(admitted.len(), 1, "admitted: {admitted:?}");
        let reported = admitted.first().copied().unwrap_or(0);
        assert_eq!(reported + t.held_back.load(Ordering::Relaxed), 7999);
    }
}
