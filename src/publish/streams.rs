//! Which stream captures a subject, known before anything is published
//! (SPEC 3): jetway never sends a publish to find out. A publish to a
//! subject no stream captures would reach whatever core NATS subscriber
//! listens there (a request/reply service of another team) before its
//! "no responders" came back.
//!
//! The configured streams answer at once. Other streams of the account
//! (`publish.allow` absent: "any subject a stream captures") are asked of
//! the server (`$JS.API.STREAM.NAMES` with a subject filter) and remembered
//! in a bounded cache: a found stream for [`FOUND_FOR`], a miss for
//! [`MISS_FOR`], so a stream created later is found within seconds while a
//! flood of publishes to an unknown subject costs the server one lookup
//! every few seconds.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::GetStreamByNameErrorKind};

use crate::config::StreamConfig;
use crate::error::ApiError;
use crate::{nats, subject};

/// How long "a stream captures this subject" is trusted without asking again.
pub const FOUND_FOR: Duration = Duration::from_secs(30);
/// How long "no stream captures this subject" is trusted.
pub const MISS_FOR: Duration = Duration::from_secs(2);
/// Most subjects remembered at once.
const MAX_SUBJECTS: usize = 4096;
/// How often a configured stream that does not answer publishes is looked
/// up, to create it again if it is gone.
const RESTORE_EVERY: Duration = Duration::from_secs(1);

/// Answers of the server by subject: whether a stream captured it, when.
#[derive(Default)]
struct Cache(HashMap<String, (bool, Instant)>);

fn trusted_for(captured: bool) -> Duration {
    if captured {
        FOUND_FOR
    } else {
        MISS_FOR
    }
}

impl Cache {
    fn answer(&self, subject: &str, now: Instant) -> Option<Result<(), ApiError>> {
        match self.0.get(subject) {
            Some((captured, at)) if now.duration_since(*at) < trusted_for(*captured) => {
                Some(if *captured {
                    Ok(())
                } else {
                    Err(ApiError::NoStream(subject.to_string()))
                })
            }
            _ => None,
        }
    }

    fn remember(&mut self, subject: &str, captured: bool, now: Instant) {
        if self.0.len() >= MAX_SUBJECTS {
            self.0
                .retain(|_, (c, at)| now.duration_since(*at) < trusted_for(*c));
            if self.0.len() >= MAX_SUBJECTS {
                self.0.clear();
            }
        }
        self.0.insert(subject.to_string(), (captured, now));
    }
}

/// The streams a publish may go to.
pub struct Streams {
    configured: Vec<StreamConfig>,
    js: jetstream::Context,
    cache: RwLock<Cache>,
    /// One lookup on the server at a time: a burst of publishes to a new
    /// subject asks once, the others find its answer in the cache.
    lookup: tokio::sync::Mutex<()>,
    /// When a configured stream was last looked up because it did not
    /// answer; held by the lookup under way.
    restoring: Arc<tokio::sync::Mutex<Option<Instant>>>,
}

impl Streams {
    pub fn new(configured: Vec<StreamConfig>, js: jetstream::Context) -> Streams {
        Streams {
            configured,
            js,
            cache: RwLock::default(),
            lookup: tokio::sync::Mutex::new(()),
            restoring: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    /// The configured stream that captures `subject`.
    pub fn configured(&self, subject: &str) -> Option<&str> {
        self.configured
            .iter()
            .find(|s| s.subjects.iter().any(|p| subject::matches(p, subject)))
            .map(|s| s.name.as_str())
    }

    /// The names of the configured streams.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.configured.iter().map(|s| s.name.as_str())
    }

    fn cached(&self, subject: &str) -> Option<Result<(), ApiError>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        cache.answer(subject, Instant::now())
    }

    fn remember(&self, subject: &str, captured: bool) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remember(subject, captured, Instant::now());
    }

    /// `Ok` when a stream is known to capture `subject`; 404 `no_stream`
    /// when none does; 503 when the server cannot be asked (nothing sent).
    pub async fn capture(&self, subject: &str) -> Result<(), ApiError> {
        if self.configured(subject).is_some() {
            return Ok(());
        }
        if let Some(answer) = self.cached(subject) {
            return answer;
        }
        let _one = self.lookup.lock().await;
        if let Some(answer) = self.cached(subject) {
            return answer;
        }
        match self.js.stream_by_subject(subject.to_string()).await {
            Ok(_) => {
                self.remember(subject, true);
                Ok(())
            }
            Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                self.remember(subject, false);
                Err(ApiError::NoStream(subject.to_string()))
            }
            Err(e) => Err(ApiError::NatsUnavailable(format!(
                "cannot ask NATS which stream captures {subject}: {e}; nothing was sent"
            ))),
        }
    }

    /// A configured stream did not answer a publish ("no responders"):
    /// looks it up in the background and creates it again if the server
    /// no longer has it (SPEC 4), so a sidecar that only publishes recovers
    /// too. Never waits: the publish goes on as it would have. One lookup
    /// at a time, once a second at most.
    pub fn restore(&self, name: &str) {
        let Some(config) = self.configured.iter().find(|s| s.name == name) else {
            return;
        };
        let Ok(mut last) = self.restoring.try_lock() else {
            return;
        };
        if last.is_some_and(|at| at.elapsed() < RESTORE_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let (js, config, guard) = (self.js.clone(), config.clone(), self.restoring.clone());
        tokio::spawn(async move {
            // Held until done: no second lookup meanwhile.
            let _one = guard.lock().await;
            if let Err(e) = nats::restore_stream(&js, &config).await {
                tracing::debug!(stream = %config.name, error = %e, "cannot look the stream up");
            }
        });
    }

    /// Forgets that a stream captured `subject` (it did not answer a
    /// publish: deleted, or its subjects changed).
    pub fn forget(&self, subject: &str) {
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.0.remove(subject);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_trusted_for_a_while() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.remember("payments.x", true, t0);
        cache.remember("nowhere.x", false, t0);
        assert!(matches!(cache.answer("payments.x", t0), Some(Ok(()))));
        assert!(matches!(
            cache.answer("nowhere.x", t0),
            Some(Err(ApiError::NoStream(_)))
        ));
        assert!(cache.answer("other.x", t0).is_none());
        // A miss is asked again soon (a stream created later is found), a
        // hit later (a deleted stream is noticed on its first no-answer).
        assert!(cache.answer("nowhere.x", t0 + MISS_FOR).is_none());
        assert!(cache.answer("payments.x", t0 + MISS_FOR).is_some());
        assert!(cache.answer("payments.x", t0 + FOUND_FOR).is_none());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        for i in 0..MAX_SUBJECTS * 3 {
            cache.remember(&format!("s.{i}"), i % 2 == 0, t0);
        }
        assert!(cache.0.len() <= MAX_SUBJECTS);
        let newest = format!("s.{}", MAX_SUBJECTS * 3 - 1);
        assert!(cache.answer(&newest, t0).is_some());
    }
}
