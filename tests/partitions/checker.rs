//! A Jepsen-style checker: pure functions over what the publishers saw
//! (one attempt per key), what the stream stored (the reference copy and
//! each node's own copy) and what the endpoint received.
//!
//! - `ok`: 2xx; `failed`: a definite refusal (4xx, 503: nothing stored);
//!   `unknown`: 504, any other 5xx, a broken connection or a timeout.
//! - **lost**: ok, yet not stored.
//! - **unexpected**: stored, yet never attempted or refused definitely.
//! - **recovered**: unknown, and stored (allowed).
//! - **dup_stored**: extra copies of a key in the stream.
//! - **missing**: stored, never delivered.
//! - **dup_delivered**: extra deliveries of a key (allowed: at least once).
//! - **divergence**: (sequence, key) pairs in which a node's own copy and
//!   the reference differ, summed over the nodes; a node that could not be
//!   read counts the whole reference.
//!
//! A run passes only with lost = unexpected = missing = 0.
//! `missing_diverged` counts the missing keys the replicas' divergence
//! accounts for: every sequence the key is stored at differs on a node.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Unknown,
}

impl Outcome {
    /// The outcome of an HTTP answer to a publish.
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            400..=499 | 503 => Outcome::Failed,
            _ => Outcome::Unknown,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Attempt {
    pub key: String,
    pub outcome: Outcome,
}

/// What the end of a run found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub attempts: usize,
    pub ok: usize,
    pub failed: usize,
    pub unknown: usize,
    pub lost: usize,
    pub unexpected: usize,
    pub recovered: usize,
    pub dup_stored: usize,
    pub missing: usize,
    pub dup_delivered: usize,
    pub divergence: usize,
    /// Of `missing`, the keys stored only at sequences where a node's own
    /// copy holds something else: the replicas diverged, and a consumer
    /// reading its own copy delivered what that copy held there.
    pub missing_diverged: usize,
}

/// `stored`: the stream as the leader has it, (sequence, key) in order;
/// `nodes`: each node's own copy, `None` when it could not be read;
/// `delivered`: the key of every request the endpoint received.
pub fn check(
    attempts: &[Attempt],
    stored: &[(u64, String)],
    nodes: &[Option<Vec<(u64, String)>>],
    delivered: &[String],
) -> Report {
    let mut r = Report {
        attempts: attempts.len(),
        ..Report::default()
    };
    let mut outcome: HashMap<&str, Outcome> = HashMap::new();
    for a in attempts {
        match a.outcome {
            Outcome::Ok => r.ok += 1,
            Outcome::Failed => r.failed += 1,
            Outcome::Unknown => r.unknown += 1,
        }
        // A key attempted twice counts by its best outcome.
        let best = match (outcome.get(a.key.as_str()), a.outcome) {
            (Some(Outcome::Ok), _) | (_, Outcome::Ok) => Outcome::Ok,
            (Some(Outcome::Unknown), _) | (_, Outcome::Unknown) => Outcome::Unknown,
            _ => Outcome::Failed,
        };
        outcome.insert(a.key.as_str(), best);
    }
    let mut stored_keys: HashSet<&str> = HashSet::new();
    for (_, key) in stored {
        if !stored_keys.insert(key.as_str()) {
            r.dup_stored += 1;
        }
    }
    for (key, o) in &outcome {
        match (o, stored_keys.contains(key)) {
            (Outcome::Ok, false) => r.lost += 1,
            (Outcome::Unknown, true) => r.recovered += 1,
            _ => {}
        }
    }
    r.unexpected = stored_keys
        .iter()
        .filter(|k| matches!(outcome.get(*k), None | Some(Outcome::Failed)))
        .count();
    let mut delivered_keys: HashSet<&str> = HashSet::new();
    for key in delivered {
        if !delivered_keys.insert(key.as_str()) {
            r.dup_delivered += 1;
        }
    }
    r.missing = stored_keys.difference(&delivered_keys).count();
    // Each node's differences from the reference: counted, and where.
    let reference: HashSet<(u64, &str)> = stored.iter().map(|(s, k)| (*s, k.as_str())).collect();
    let mut diverged: HashSet<u64> = HashSet::new();
    for node in nodes {
        r.divergence += match node {
            Some(copy) => {
                let copy: HashSet<(u64, &str)> =
                    copy.iter().map(|(s, k)| (*s, k.as_str())).collect();
                let differ: Vec<u64> = copy
                    .symmetric_difference(&reference)
                    .map(|(s, _)| *s)
                    .collect();
                let count = differ.len();
                diverged.extend(differ);
                count
            }
            None => reference.len().max(1),
        };
    }
    r.missing_diverged = stored_keys
        .difference(&delivered_keys)
        .filter(|key| {
            stored
                .iter()
                .filter(|(_, k)| k == *key)
                .all(|(seq, _)| diverged.contains(seq))
        })
        .count();
    r
}

impl Report {
    /// Whether all that fails the run is keys that are missing because
    /// the stream's replicas diverged (`missing_diverged`): a fault of the
    /// server, which a sidecar reading through a consumer cannot see.
    pub fn fails_only_by_divergence(&self) -> bool {
        !self.passed()
            && self.lost == 0
            && self.unexpected == 0
            && self.missing == self.missing_diverged
    }

    pub fn passed(&self) -> bool {
        self.lost == 0 && self.unexpected == 0 && self.missing == 0
    }

    /// `JEPSEN|scenario|server-version|attempts|ok|failed|unknown|lost|unexpected|recovered|dup_stored|missing|dup_delivered|divergence`
    pub fn line(&self, scenario: &str, server: &str) -> String {
        format!(
            "JEPSEN|{scenario}|{server}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.attempts,
            self.ok,
            self.failed,
            self.unknown,
            self.lost,
            self.unexpected,
            self.recovered,
            self.dup_stored,
            self.missing,
            self.dup_delivered,
            self.divergence
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(key: &str, outcome: Outcome) -> Attempt {
        Attempt {
            key: key.to_string(),
            outcome,
        }
    }

    fn seq(keys: &[&str]) -> Vec<(u64, String)> {
        keys.iter()
            .enumerate()
            .map(|(i, k)| (i as u64 + 1, k.to_string()))
            .collect()
    }

    fn strings(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn statuses_are_classified_as_the_issue_says() {
        assert_eq!(Outcome::of_status(200), Outcome::Ok);
        assert_eq!(Outcome::of_status(202), Outcome::Ok);
        assert_eq!(Outcome::of_status(400), Outcome::Failed);
        assert_eq!(Outcome::of_status(429), Outcome::Failed);
        assert_eq!(Outcome::of_status(503), Outcome::Failed);
        assert_eq!(Outcome::of_status(504), Outcome::Unknown);
        assert_eq!(Outcome::of_status(502), Outcome::Unknown);
        assert_eq!(Outcome::of_status(500), Outcome::Unknown);
    }

    #[test]
    fn a_clean_run_passes_with_nothing_counted() {
        let attempts = [attempt("a", Outcome::Ok), attempt("b", Outcome::Ok)];
        let stored = seq(&["a", "b"]);
        let nodes = vec![Some(stored.clone()); 3];
        let r = check(&attempts, &stored, &nodes, &strings(&["b", "a"]));
        assert_eq!(
            r,
            Report {
                attempts: 2,
                ok: 2,
                ..Report::default()
            }
        );
        assert!(r.passed());
        assert_eq!(
            r.line("x", "2.9.10"),
            "JEPSEN|x|2.9.10|2|2|0|0|0|0|0|0|0|0|0"
        );
    }

    #[test]
    fn an_acked_key_not_stored_is_lost_and_fails() {
        let attempts = [attempt("a", Outcome::Ok), attempt("b", Outcome::Ok)];
        let stored = seq(&["a"]);
        let r = check(&attempts, &stored, &[], &strings(&["a"]));
        assert_eq!(r.lost, 1);
        assert!(!r.passed());
    }

    #[test]
    fn stored_keys_never_attempted_or_refused_are_unexpected() {
        let attempts = [attempt("a", Outcome::Ok), attempt("r", Outcome::Failed)];
        let stored = seq(&["a", "r", "ghost"]);
        let r = check(&attempts, &stored, &[], &strings(&["a", "r", "ghost"]));
        assert_eq!(r.unexpected, 2);
        assert_eq!(r.lost, 0);
        assert!(!r.passed());
    }

    #[test]
    fn unknown_outcomes_stored_are_recovered_and_allowed() {
        let attempts = [
            attempt("u1", Outcome::Unknown),
            attempt("u2", Outcome::Unknown),
            attempt("f", Outcome::Failed),
        ];
        let stored = seq(&["u1"]);
        let r = check(&attempts, &stored, &[], &strings(&["u1"]));
        assert_eq!((r.unknown, r.failed, r.recovered), (2, 1, 1));
        assert!(r.passed());
    }

    #[test]
    fn duplicates_are_counted_in_the_stream_and_at_the_endpoint() {
        let attempts = [attempt("a", Outcome::Ok), attempt("b", Outcome::Ok)];
        let stored = seq(&["a", "b", "a"]);
        let r = check(&attempts, &stored, &[], &strings(&["a", "a", "a", "b"]));
        assert_eq!((r.dup_stored, r.dup_delivered), (1, 2));
        assert!(r.passed(), "duplicates alone do not fail a run");
    }

    #[test]
    fn a_key_missing_where_a_node_diverged_is_told_apart() {
        let attempts = vec![
            attempt("a", Outcome::Ok),
            attempt("b", Outcome::Ok),
            attempt("c", Outcome::Ok),
        ];
        let stored = seq(&["a", "b", "c"]);
        // A node holds another key at 2, where the leader holds "b".
        let diverged = vec![
            (1, "a".to_string()),
            (2, "x".to_string()),
            (3, "c".to_string()),
        ];
        let nodes = vec![Some(stored.clone()), Some(diverged), None];
        let r = check(&attempts, &stored, &nodes, &strings(&["a", "c"]));
        assert_eq!((r.missing, r.missing_diverged, r.divergence), (1, 1, 2 + 3));
        assert!(!r.passed());
        assert!(r.fails_only_by_divergence());

        // Missing where every node agrees: the sidecar's fault, not told apart.
        let r = check(&attempts, &stored, &nodes, &strings(&["a", "b"]));
        assert_eq!((r.missing, r.missing_diverged), (1, 0));
        assert!(!r.fails_only_by_divergence());

        // A key stored twice, once where the copies agree: that copy
        // should have been delivered.
        let twice = seq(&["a", "b", "c", "b"]);
        let nodes = vec![Some(vec![
            (1, "a".to_string()),
            (2, "x".to_string()),
            (3, "c".to_string()),
            (4, "b".to_string()),
        ])];
        let r = check(&attempts, &twice, &nodes, &strings(&["a", "c"]));
        assert_eq!((r.missing, r.missing_diverged), (1, 0));
        assert!(!r.fails_only_by_divergence());

        // A run that passes is not "failing by divergence".
        let r = check(&attempts, &stored, &[], &strings(&["a", "b", "c"]));
        assert!(r.passed() && !r.fails_only_by_divergence());
    }

    #[test]
    fn a_stored_key_never_delivered_is_missing_and_fails() {
        let attempts = [attempt("a", Outcome::Ok), attempt("b", Outcome::Ok)];
        let stored = seq(&["a", "b"]);
        let r = check(&attempts, &stored, &[], &strings(&["a", "a"]));
        assert_eq!(r.missing, 1);
        assert!(!r.passed());
    }

    #[test]
    fn the_best_outcome_of_a_key_attempted_twice_counts() {
        let attempts = [attempt("a", Outcome::Unknown), attempt("a", Outcome::Ok)];
        let r = check(&attempts, &[], &[], &[]);
        assert_eq!(
            (r.attempts, r.ok, r.unknown, r.lost, r.recovered),
            (2, 1, 1, 1, 0)
        );
    }

    #[test]
    fn divergence_counts_pairs_that_differ_per_node() {
        let attempts = [attempt("a", Outcome::Ok), attempt("b", Outcome::Ok)];
        let stored = seq(&["a", "b"]);
        let nodes = vec![
            Some(stored.clone()),
            // Missing b, and a c of its own at 3: two pairs off.
            Some(vec![(1, "a".to_string()), (3, "c".to_string())]),
            // Same keys at other sequences: four pairs off.
            Some(seq(&["b", "a"])),
            // Unreadable: the whole reference.
            None,
        ];
        let r = check(&attempts, &stored, &nodes, &strings(&["a", "b"]));
        assert_eq!(r.divergence, 2 + 4 + 2);
        assert!(r.passed(), "divergence is reported, it does not decide");
    }
}
