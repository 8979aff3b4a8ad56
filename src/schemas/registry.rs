//! The registry's I/O shell: the JetStream KV bucket, and the watch that
//! keeps every sidecar's in-memory map of compiled validators current.
//!
//! Keys: `schema.<type>.<N>` holds version N of a type (written once, with
//! a create-only write, so concurrent registrations get consecutive
//! versions and never overwrite one another); `config.<type>` holds
//! `{"compatibility": "<mode>"}`. A type name may contain dots; the version
//! is the last token.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;

use super::compat::Mode;
use super::validate::{self, Compiled};

/// One registered version, compiled.
#[derive(Debug)]
pub struct Version {
    /// The bytes as registered (served by `GET .../versions/N`).
    pub raw: Bytes,
    pub schema: Value,
    pub canonical: String,
    pub compiled: Compiled,
}

/// What the registry knows of one type.
#[derive(Debug, Default, Clone)]
pub struct TypeState {
    pub versions: BTreeMap<u32, Arc<Version>>,
    pub compatibility: Option<Mode>,
}

#[derive(Debug, Default)]
struct State {
    types: HashMap<String, TypeState>,
    /// The watch delivered everything stored when it started.
    synced: bool,
}

/// The in-memory registry and the bucket behind it.
#[derive(Default)]
pub struct Registry {
    state: RwLock<State>,
    store: Mutex<Option<kv::Store>>,
}

/// The key of version `n` of type `t`.
pub fn version_key(t: &str, n: u32) -> String {
    format!("schema.{t}.{n}")
}

/// The key of type `t`'s settings.
pub fn config_key(t: &str) -> String {
    format!("config.{t}")
}

/// What a key holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Key<'a> {
    Version(&'a str, u32),
    Config(&'a str),
}

/// Parses a key of the bucket; `None` for keys jetway does not write.
pub fn parse_key(key: &str) -> Option<Key<'_>> {
    if let Some(rest) = key.strip_prefix("schema.") {
        let (t, n) = rest.rsplit_once('.')?;
        let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
        return super::config::is_valid_type(t).then_some(Key::Version(t, n));
    }
    let t = key.strip_prefix("config.")?;
    super::config::is_valid_type(t).then_some(Key::Config(t))
}

/// A registry write or read that needs NATS failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the schema registry is not reachable yet")]
    NotReady,
    #[error("the key exists already")]
    Exists,
    #[error("{0}")]
    Nats(String),
}

/// The stream of the bucket, as async-nats' `create_key_value` would make
/// it. Created through the stream API because `create_key_value` first
/// queries the account, whose answer async-nats 0.51 cannot parse from
/// nats-server 2.9.
fn bucket_stream(bucket: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: format!("KV_{bucket}"),
        description: Some("jetway schema registry (SPEC section 9)".into()),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the bucket if it is missing and opens it.
pub async fn open_bucket(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    let nats = |e: &dyn std::fmt::Display| StoreError::Nats(e.to_string());
    match js.get_stream(format!("KV_{bucket}")).await {
        Ok(_) => {}
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(je)
                if je.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                if let Err(e) = js.create_stream(bucket_stream(bucket, replicas)).await {
                    // Another sidecar may have created it meanwhile.
                    if js.get_stream(format!("KV_{bucket}")).await.is_err() {
                        return Err(nats(&e));
                    }
                }
            }
            _ => return Err(nats(&e)),
        },
    }
    js.get_key_value(bucket).await.map_err(|e| nats(&e))
}

impl Registry {
    /// What is known of type `t`.
    pub fn get(&self, t: &str) -> Option<TypeState> {
        self.read().types.get(t).cloned()
    }

    /// One version of a type, without cloning the type's whole state (the
    /// publish path).
    pub fn version(&self, t: &str, n: Option<u32>) -> Lookup {
        let state = self.read();
        let Some(ts) = state.types.get(t) else {
            return Lookup::UnknownType;
        };
        let found = match n {
            Some(n) => ts.versions.get(&n),
            None => ts.versions.values().next_back(),
        };
        match found {
            Some(v) => Lookup::Found(
                n.or_else(|| ts.versions.keys().next_back().copied())
                    .unwrap_or(0),
                v.clone(),
            ),
            None if ts.versions.is_empty() => Lookup::UnknownType,
            None => Lookup::UnknownVersion,
        }
    }

    /// Every type, sorted by name.
    pub fn types(&self) -> Vec<(String, TypeState)> {
        let mut all: Vec<(String, TypeState)> = self
            .read()
            .types
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Versions known, all types together.
    pub fn version_count(&self) -> usize {
        self.read().types.values().map(|t| t.versions.len()).sum()
    }

    pub fn is_synced(&self) -> bool {
        self.read().synced
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (every
        // write is one insert), so a poisoned lock is still usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> Option<kv::Store> {
        self.store.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_store(&self, store: kv::Store) {
        *self.store.lock().unwrap_or_else(|e| e.into_inner()) = Some(store);
    }

    /// Applies one stored value; returns false when it is not usable (a
    /// value written past jetway that is not a valid schema).
    pub fn apply(&self, key: &str, value: &[u8]) -> bool {
        match parse_key(key) {
            Some(Key::Version(t, n)) => match compile_version(value) {
                Ok(v) => {
                    self.insert(t, n, Arc::new(v));
                    true
                }
                Err(e) => {
                    tracing::warn!(key, error = %e, "schema registry holds a value that is not a valid schema; ignored");
                    false
                }
            },
            Some(Key::Config(t)) => {
                let mode = serde_json::from_slice::<Value>(value)
                    .ok()
                    .and_then(|v| v.get("compatibility")?.as_str().and_then(Mode::parse));
                match mode {
                    Some(mode) => {
                        self.write()
                            .types
                            .entry(t.to_string())
                            .or_default()
                            .compatibility = Some(mode);
                        true
                    }
                    None => {
                        tracing::warn!(
                            key,
                            "schema registry holds a type config jetway cannot read; ignored"
                        );
                        false
                    }
                }
            }
            None => false,
        }
    }

    pub fn insert(&self, t: &str, n: u32, v: Arc<Version>) {
        self.write()
            .types
            .entry(t.to_string())
            .or_default()
            .versions
            .entry(n)
            .or_insert(v);
    }

    /// Creates a key that must not exist yet.
    pub async fn create(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        let store = self.store().ok_or(StoreError::NotReady)?;
        match store.create(key, value).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(StoreError::Exists),
            Err(e) => Err(StoreError::Nats(e.to_string())),
        }
    }

    pub async fn put(&self, key: &str, value: Bytes) -> Result<(), StoreError> {
        let store = self.store().ok_or(StoreError::NotReady)?;
        store
            .put(key, value)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Nats(e.to_string()))
    }

    pub async fn fetch(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let store = self.store().ok_or(StoreError::NotReady)?;
        store
            .get(key)
            .await
            .map_err(|e| StoreError::Nats(e.to_string()))
    }

    /// Follows the bucket for as long as the process runs: every value is
    /// applied to the map as it is stored. A broken watch is started again
    /// (it then replays the bucket, which is idempotent).
    pub async fn follow(self: Arc<Self>, on_change: impl Fn(usize) + Send + 'static) {
        let mut delay = Duration::from_millis(100);
        loop {
            let Some(store) = self.store() else {
                tokio::time::sleep(delay).await;
                continue;
            };
            // From the first revision: `watch_all` delivers only new
            // values; this replays what is stored (one value per key).
            match store.watch_all_from_revision(1).await {
                Ok(mut watch) => {
                    delay = Duration::from_millis(100);
                    // An empty bucket delivers nothing: current at once.
                    if watch_is_current_when_empty(&store).await {
                        self.write().synced = true;
                    }
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(entry) => {
                                if entry.operation == kv::Operation::Put {
                                    self.apply(&entry.key, &entry.value);
                                }
                                if entry.delta == 0 || entry.seen_current {
                                    self.write().synced = true;
                                }
                                on_change(self.version_count());
                            }
                            Err(e) => {
                                tracing::info!(error = %e, "schema registry watch broke; watching again");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::info!(error = %e, "cannot watch the schema registry yet; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

async fn watch_is_current_when_empty(store: &kv::Store) -> bool {
    match store.status().await {
        Ok(status) => status.values() == 0,
        Err(_) => false,
    }
}

/// Parses and compiles a stored or submitted schema.
pub fn compile_version(raw: &[u8]) -> Result<Version, String> {
    let schema: Value =
        serde_json::from_slice(raw).map_err(|e| format!("the body is not JSON: {e}"))?;
    let compiled = validate::compile(&schema)?;
    Ok(Version {
        raw: Bytes::copy_from_slice(raw),
        canonical: validate::canonical(&schema),
        schema,
        compiled,
    })
}

/// What a lookup of the publish path found.
pub enum Lookup {
    Found(u32, Arc<Version>),
    UnknownType,
    UnknownVersion,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_with_dotted_types() {
        for (t, n) in [("order.created", 1), ("a.1", 2), ("x.v2", 30)] {
            let key = version_key(t, n);
            assert_eq!(parse_key(&key), Some(Key::Version(t, n)));
        }
        assert_eq!(
            parse_key("config.order.created"),
            Some(Key::Config("order.created"))
        );
        assert_eq!(parse_key("schema.order.created.0"), None);
        assert_eq!(parse_key("schema.order"), None);
        assert_eq!(parse_key("other"), None);
    }

    #[test]
    fn lookups_by_version_and_latest() {
        let r = Registry::default();
        assert!(r.apply(&version_key("t", 1), br#"{"type":"string"}"#));
        assert!(r.apply(&version_key("t", 2), br#"{"type":["string","null"]}"#));
        assert!(!r.apply(&version_key("t", 3), br#"{"type":"strung"}"#));
        assert!(r.apply(&config_key("t"), br#"{"compatibility":"full"}"#));
        assert!(matches!(r.version("t", None), Lookup::Found(2, _)));
        assert!(matches!(r.version("t", Some(1)), Lookup::Found(1, _)));
        assert!(matches!(r.version("t", Some(7)), Lookup::UnknownVersion));
        assert!(matches!(r.version("u", None), Lookup::UnknownType));
        assert_eq!(r.version_count(), 2);
        assert_eq!(r.get("t").and_then(|t| t.compatibility), Some(Mode::Full));
    }
}
