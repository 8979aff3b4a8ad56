//! Keep-alive HTTP/1 connections to one subscription's endpoint.
//!
//! hyper-util's pooled client costs about 5 000 instructions per request
//! beyond the request itself (callgrind, 3 000 deliveries at concurrency
//! 16): a pool keyed by scheme and authority in a SipHash map, looked up on
//! every checkout and again on every return, the `Host` header formatted
//! anew, the URI rewritten to origin form, and often a task spawned to put
//! the connection back once it is ready. One subscription talks to one
//! endpoint, so it keeps its own connections: a list of idle senders of
//! hyper's own HTTP/1 client (`hyper::client::conn::http1`), the request
//! built with its `Host` and origin-form target once per subscription.
//!
//! What the pooled client did that still holds here: a request that a
//! kept-alive connection refused before sending it (closed meanwhile) is
//! sent on a fresh connection; connections idle for longer than
//! [`IDLE_TIMEOUT`] are closed; connecting gives up after
//! [`CONNECT_TIMEOUT`] and says so as a connect error (the endpoint is
//! down, not failing).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;

/// How long an idle connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made: the endpoint is down.
    #[error("{0}")]
    Connect(std::io::Error),
    /// The connection failed while the request was sent or answered.
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

impl SendError {
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

struct Idle {
    sender: SendRequest<Full<Bytes>>,
    since: Instant,
}

/// The connections of one subscription to its endpoint.
pub struct Connections {
    host: String,
    port: u16,
    /// Idle connections, the most recently used last.
    idle: Mutex<Vec<Idle>>,
    /// Most idle connections kept (the subscription's concurrency: more
    /// are never in use at once, but for a replay beside it).
    max_idle: usize,
}

/// A connection taken for one request; [`Connections::put_back`] returns it.
pub struct Taken(SendRequest<Full<Bytes>>);

impl Connections {
    /// Connections to `endpoint` (an absolute `http://` URL).
    pub fn new(endpoint: &Uri, max_idle: usize) -> Connections {
        let host = endpoint
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Connections {
            host,
            port: endpoint.port_u16().unwrap_or(80),
            idle: Mutex::new(Vec::new()),
            max_idle: max_idle.max(1),
        }
    }

    /// Sends `request` (origin-form target, `Host` set) on an idle
    /// connection, or on a new one. Give the connection back with
    /// [`put_back`](Self::put_back) once the answer is read.
    pub async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Taken), SendError> {
        loop {
            let (mut sender, reused) = match self.take_idle() {
                Some(sender) => (sender, true),
                None => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                // Closed while idle (the app closed it): try another.
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, Taken(sender))),
                Err(mut e) => match e.take_message() {
                    // Never written: it may go on a fresh connection, as
                    // hyper-util's client does (`retry_canceled_requests`).
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// Keeps the connection for the next request, unless it is closed or
    /// enough are idle already.
    pub fn put_back(&self, Taken(sender): Taken) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT && !c.sender.is_closed());
        if idle.len() < self.max_idle {
            idle.push(Idle { sender, since: now });
        }
    }

    /// Closes the connections idle for longer than [`IDLE_TIMEOUT`] (called
    /// now and then, so a quiet subscription does not keep them open).
    pub fn close_idle(&self) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT && !c.sender.is_closed());
    }

    /// Idle connections held now.
    #[cfg(test)]
    pub fn idle(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn take_idle(&self) -> Option<SendRequest<Full<Bytes>>> {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(c) = idle.pop() {
            if now.duration_since(c.since) < IDLE_TIMEOUT && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, SendError> {
        let connecting = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(SendError::Connect(e)),
            Err(_) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {CONNECT_TIMEOUT:?}"),
                )))
            }
        };
        // Small requests go out at once.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "endpoint connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// The request target for `endpoint`: its path and query (origin form, as
/// HTTP/1 sends it to the server itself).
pub fn origin_form(endpoint: &Uri) -> Uri {
    match endpoint.path_and_query() {
        Some(pq) => Uri::from(pq.clone()),
        None => Uri::from_static("/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_path_and_query() {
        for (endpoint, target) in [
            ("http://127.0.0.1:8080/events/a?x=1", "/events/a?x=1"),
            ("http://127.0.0.1:8080", "/"),
            ("http://app/", "/"),
        ] {
            let endpoint: Uri = endpoint.parse().expect("uri");
            assert_eq!(origin_form(&endpoint).to_string(), target);
        }
    }

    #[test]
    fn ipv6_hosts_are_connected_to_without_brackets() {
        let c = Connections::new(&"http://[::1]:9000/e".parse().expect("uri"), 4);
        assert_eq!((c.host.as_str(), c.port), ("::1", 9000));
        let c = Connections::new(&"http://app/e".parse().expect("uri"), 4);
        assert_eq!((c.host.as_str(), c.port), ("app", 80));
    }

    /// A server that answers `per_connection` requests on a connection,
    /// then closes it (saying so in the last answer); counts the
    /// connections it accepted.
    async fn server(
        per_connection: usize,
    ) -> (
        std::net::SocketAddr,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for answered in 1..=per_connection {
                        let mut got = Vec::new();
                        // Requests without a body: the head ends the request.
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match s.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let answer: &[u8] = if answered == per_connection {
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
                        } else {
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    // Closes after `per_connection` answers.
                });
            }
        });
        (addr, accepted)
    }

    fn request(addr: std::net::SocketAddr) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(Bytes::new()));
        *r.uri_mut() = Uri::from_static("/e");
        r.headers_mut().insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_str(&addr.to_string()).expect("host"),
        );
        r
    }

    async fn send_one(c: &Connections, addr: std::net::SocketAddr) -> u16 {
        use http_body_util::BodyExt;
        let (response, taken) = c.send(request(addr)).await.expect("answer");
        let status = response.status().as_u16();
        response.into_body().collect().await.expect("body");
        c.put_back(taken);
        status
    }

    #[tokio::test]
    async fn a_connection_is_kept_alive_between_requests() {
        let (addr, accepted) = server(usize::MAX).await;
        let c = Connections::new(&format!("http://{addr}/e").parse().expect("uri"), 4);
        for _ in 0..5 {
            assert_eq!(send_one(&c, addr).await, 200);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(c.idle(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced() {
        // The app closes every connection after one answer: each request
        // finds its connection closed and goes on a new one.
        let (addr, accepted) = server(1).await;
        let c = Connections::new(&format!("http://{addr}/e").parse().expect("uri"), 4);
        for _ in 0..5 {
            assert_eq!(send_one(&c, addr).await, 200);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn nothing_listening_is_a_connect_error() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = free.local_addr().expect("addr");
        drop(free);
        let c = Connections::new(&format!("http://{addr}/e").parse().expect("uri"), 4);
        let err = c.send(request(addr)).await.err().expect("refused");
        assert!(err.is_connect(), "{err}");
    }

    #[tokio::test]
    async fn no_more_than_max_idle_are_kept() {
        let (addr, _) = server(usize::MAX).await;
        let c = Connections::new(&format!("http://{addr}/e").parse().expect("uri"), 2);
        let mut taken = Vec::new();
        for _ in 0..4 {
            let (response, t) = c.send(request(addr)).await.expect("answer");
            use http_body_util::BodyExt;
            response.into_body().collect().await.expect("body");
            taken.push(t);
        }
        for t in taken {
            c.put_back(t);
        }
        assert_eq!(c.idle(), 2);
    }
}
