//! An HTTP endpoint that records what it receives and answers as told.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

use super::eventually;

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

type Behaviour = dyn Fn(&Received, usize) -> BoxedAnswer + Send + Sync;
type BoxedAnswer = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

/// An HTTP endpoint that records every request and answers as told.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    /// Answers 200 to everything.
    pub async fn ok() -> Endpoint {
        Endpoint::start(|_, _| async { StatusCode::OK.into_response() }).await
    }

    /// Answers with `behave(request, n)` where n counts requests from 0.
    pub async fn start<F, Fut>(behave: F) -> Endpoint
    where
        F: Fn(&Received, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Endpoint::serve(listener, behave)
    }

    /// Serves on a given listener (to come up on a port chosen earlier).
    pub fn serve<F, Fut>(listener: TcpListener, behave: F) -> Endpoint
    where
        F: Fn(&Received, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let behave: Arc<Behaviour> = Arc::new(move |r, n| Box::pin(behave(r, n)));
        let (rec, inf, max) = (received.clone(), in_flight.clone(), max_in_flight.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (rec, inf, max, behave) = (rec.clone(), inf.clone(), max.clone(), behave.clone());
            async move {
                let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                let r = Received { headers, body };
                let n = {
                    let mut all = rec.lock().expect("lock");
                    all.push(r.clone());
                    all.len() - 1
                };
                let answer = behave(&r, n).await;
                inf.fetch_sub(1, Ordering::SeqCst);
                answer
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Endpoint {
            addr,
            received,
            in_flight,
            max_in_flight,
            task: Arc::new(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// The Idempotency-Keys of the requests received.
    pub fn keys(&self) -> HashSet<String> {
        self.received()
            .iter()
            .filter_map(|r| r.header("idempotency-key"))
            .collect()
    }

    /// Requests per Idempotency-Key.
    pub fn by_key(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.received() {
            *m.entry(r.header("idempotency-key").unwrap_or_default())
                .or_default() += 1;
        }
        m
    }

    /// Stops serving; the port then refuses connections.
    pub fn shutdown(&self) {
        self.task.abort();
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) {
        let me = self.clone();
        eventually(&format!("{n} requests at the endpoint"), || {
            let c = me.count();
            async move { (c >= n).then_some(()) }
        })
        .await;
    }
}
