//! Sampling: parent-based, always. A parent's sampled flag decides for its
//! whole trace (so no trace is cut in two, unlike a sampler that draws
//! again at every hop); only the traces jetway starts itself are drawn, by
//! `sample_ratio`, from the trace id (the same id always draws the same,
//! as OpenTelemetry's `TraceIdRatioBased`).

use super::span::SpanContext;

/// The parent-based sampler with a ratio for roots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Share of root traces sampled, 0.0 to 1.0.
    pub ratio: f64,
}

impl Sampler {
    /// Whether a new span of `trace_id` under `parent` is sampled.
    pub fn sample(&self, parent: Option<&SpanContext>, trace_id: &[u8; 16]) -> bool {
        match parent {
            Some(parent) => parent.is_sampled(),
            None => ratio_sampled(self.ratio, trace_id),
        }
    }
}

/// OpenTelemetry's `TraceIdRatioBased`: the low 8 bytes of the id, shifted
/// right by one, under `ratio * 2^63`.
pub fn ratio_sampled(ratio: f64, trace_id: &[u8; 16]) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    (u64::from_be_bytes(low) >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(flags: u8) -> SpanContext {
        SpanContext {
            trace_id: [7; 16],
            span_id: [1; 8],
            flags,
        }
    }

    #[test]
    fn the_parent_decides() {
        let id = [0xff; 16];
        for ratio in [0.0, 0.5, 1.0] {
            let s = Sampler { ratio };
            assert!(s.sample(Some(&ctx(0x01)), &id), "ratio {ratio}");
            assert!(!s.sample(Some(&ctx(0x00)), &id), "ratio {ratio}");
            // Other flag bits do not count as sampled.
            assert!(!s.sample(Some(&ctx(0x02)), &id), "ratio {ratio}");
        }
    }

    #[test]
    fn roots_are_drawn_by_ratio() {
        let low = [0u8; 16];
        let high = [0xff; 16];
        let mut mid = [0u8; 16];
        mid[8] = 0x40; // (0x40 << 56) >> 1 = 2^61: a quarter of 2^63
        for (ratio, id, sampled) in [
            (1.0, high, true),
            (0.0, low, false),
            (0.5, low, true),
            (0.5, high, false),
            (0.5, mid, true),
            (0.1, mid, false),
            (f64::NAN, low, false),
        ] {
            assert_eq!(
                Sampler { ratio }.sample(None, &id),
                sampled,
                "ratio {ratio} id {id:?}"
            );
        }
    }

    #[test]
    fn a_ratio_samples_about_that_share() {
        let s = Sampler { ratio: 0.25 };
        let n = 20_000;
        let hits = (0..n)
            .filter(|_| s.sample(None, &super::super::span::new_trace_id()))
            .count();
        let share = hits as f64 / n as f64;
        assert!((0.2..0.3).contains(&share), "share {share}");
    }
}
