//! The retry policy: what to do with the outcome of a delivery attempt.
//! Pure functions, table-tested (SPEC section 4).

use std::time::{Duration, SystemTime};

use crate::config::RetryPolicy;
pub use crate::envelope::Reason;

/// What happened when jetway POSTed a message to the endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The endpoint answered with this status.
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No complete answer within the subscription's `timeout`.
    Timeout,
    /// Nothing listens at the endpoint's address: the app is down or
    /// starting.
    Refused,
    /// The connection broke or the answer was not HTTP.
    Failed,
}

/// What to do with the message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// Acknowledge: delivered.
    Ack,
    /// Ask JetStream to redeliver after this delay (a delayed NAK).
    Retry(Duration),
    /// The app is not there: hand the message back at once and pause the
    /// subscription until the endpoint answers again. Never dead-letters.
    EndpointDown,
    /// Store in the dead-letter stream, then terminate the original.
    DeadLetter(Reason),
}

/// Decides the action for `outcome` of attempt number `attempt` (1 on the
/// first try). `jitter_sample` is uniform in [-1, 1].
pub fn classify(
    outcome: &Outcome,
    attempt: u64,
    policy: &RetryPolicy,
    jitter_sample: f64,
) -> Action {
    let retry_after = match outcome {
        Outcome::Status { code, .. } if (200..300).contains(code) => return Action::Ack,
        Outcome::Refused => return Action::EndpointDown,
        Outcome::Status { code, retry_after } if policy.retry_on.contains(code) => *retry_after,
        Outcome::Status { .. } => return Action::DeadLetter(Reason::Rejected),
        Outcome::Timeout | Outcome::Failed => None,
    };
    if attempt >= u64::from(policy.max_attempts) {
        return Action::DeadLetter(Reason::Exhausted);
    }
    let delay = match retry_after {
        Some(wait) => wait.min(policy.max_backoff),
        None => backoff(attempt, policy, jitter_sample),
    };
    Action::Retry(delay)
}

/// `min(max_backoff, initial_backoff * multiplier^(attempt-1))`, then
/// ± `jitter` of it, never above `max_backoff`.
pub fn backoff(attempt: u64, policy: &RetryPolicy, jitter_sample: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(1000) as i32;
    let max = policy.max_backoff.as_secs_f64();
    let base = (policy.initial_backoff.as_secs_f64() * policy.multiplier.powi(exponent)).min(max);
    let jittered = base * (1.0 + policy.jitter * jitter_sample.clamp(-1.0, 1.0));
    Duration::from_secs_f64(jittered.clamp(0.0, max))
}

/// Parses `Retry-After`: delta seconds or an HTTP date (a past date means
/// now). Anything else is ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.0,
            retry_on: vec![408, 425, 429, 500, 502, 503, 504],
        }
    }

    fn status(code: u16) -> Outcome {
        Outcome::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn outcomes_map_to_actions() {
        let secs = Duration::from_secs;
        let table: Vec<(Outcome, u64, Action)> = vec![
            (status(200), 1, Action::Ack),
            (status(204), 5, Action::Ack),
            (status(299), 9, Action::Ack),
            (status(503), 1, Action::Retry(secs(1))),
            (status(503), 2, Action::Retry(secs(2))),
            (status(500), 4, Action::Retry(secs(8))),
            (status(503), 5, Action::DeadLetter(Reason::Exhausted)),
            (status(503), 50, Action::DeadLetter(Reason::Exhausted)),
            (Outcome::Timeout, 1, Action::Retry(secs(1))),
            (Outcome::Timeout, 5, Action::DeadLetter(Reason::Exhausted)),
            (Outcome::Failed, 3, Action::Retry(secs(4))),
            (Outcome::Refused, 1, Action::EndpointDown),
            (Outcome::Refused, 500, Action::EndpointDown),
            (status(400), 1, Action::DeadLetter(Reason::Rejected)),
            (status(401), 1, Action::DeadLetter(Reason::Rejected)),
            (status(404), 2, Action::DeadLetter(Reason::Rejected)),
            (status(410), 1, Action::DeadLetter(Reason::Rejected)),
            (status(422), 1, Action::DeadLetter(Reason::Rejected)),
            (status(301), 1, Action::DeadLetter(Reason::Rejected)),
            (status(501), 1, Action::DeadLetter(Reason::Rejected)),
            (
                Outcome::Status {
                    code: 429,
                    retry_after: Some(secs(7)),
                },
                1,
                Action::Retry(secs(7)),
            ),
            (
                Outcome::Status {
                    code: 503,
                    retry_after: Some(secs(3600)),
                },
                1,
                Action::Retry(secs(60)),
            ),
            (
                Outcome::Status {
                    code: 503,
                    retry_after: Some(Duration::ZERO),
                },
                2,
                Action::Retry(Duration::ZERO),
            ),
            (
                Outcome::Status {
                    code: 503,
                    retry_after: Some(secs(1)),
                },
                5,
                Action::DeadLetter(Reason::Exhausted),
            ),
            (
                Outcome::Status {
                    code: 400,
                    retry_after: Some(secs(1)),
                },
                1,
                Action::DeadLetter(Reason::Rejected),
            ),
        ];
        for (outcome, attempt, want) in table {
            assert_eq!(
                classify(&outcome, attempt, &policy(), 0.0),
                want,
                "{outcome:?} attempt {attempt}"
            );
        }
    }

    #[test]
    fn retry_on_is_configurable() {
        let mut p = policy();
        p.retry_on = vec![409];
        assert_eq!(
            classify(&status(409), 1, &p, 0.0),
            Action::Retry(Duration::from_secs(1))
        );
        assert_eq!(
            classify(&status(503), 1, &p, 0.0),
            Action::DeadLetter(Reason::Rejected)
        );
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let mut p = policy();
        assert_eq!(backoff(1, &p, 0.0), Duration::from_secs(1));
        assert_eq!(backoff(7, &p, 0.0), Duration::from_secs(60));
        assert_eq!(backoff(u64::MAX, &p, 0.0), Duration::from_secs(60));
        p.jitter = 0.2;
        assert_eq!(backoff(3, &p, 1.0), Duration::from_secs_f64(4.8));
        assert_eq!(backoff(3, &p, -1.0), Duration::from_secs_f64(3.2));
        assert_eq!(
            backoff(10, &p, 1.0),
            Duration::from_secs(60),
            "jitter never passes the cap"
        );
        p.multiplier = 1.0;
        assert_eq!(backoff(9, &p, 0.0), Duration::from_secs(1));
    }

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        let table = [
            ("120", Some(Duration::from_secs(120))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:50:37 GMT",
                Some(Duration::from_secs(60)),
            ),
            ("Sun, 06 Nov 1994 08:00:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
            ("99999999999999999999999", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_retry_after(input, now), want, "{input:?}");
        }
    }
}
