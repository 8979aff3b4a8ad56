//! The HTTP server loop shared by the API and metrics listeners: hyper's
//! HTTP/1 with the limits a stranger's traffic needs and graceful shutdown.
//!
//! What each limit stops:
//! - slowloris (a request head trickled in) and idle connections, fresh or
//!   kept alive after a request: `header_read_timeout`. hyper starts that
//!   timer whenever it waits for a request head, so a connection that
//!   sends nothing is closed after it too and cannot hold a slot forever;
//! - a body trickled in (slow POST): `body_read_timeout` between chunks
//!   (the read fails, so the request ends with 400 `bad_request`);
//! - huge request heads: `max_header_bytes`, or more than 100 header
//!   lines: 431 from hyper itself, without a JSON body as there is no
//!   request yet (the same for heads that are not HTTP: a bare 400);
//! - connection floods: `max_connections`; more wait in the kernel's
//!   backlog, costing this process nothing, until a slot frees.
//!
//! Every connection is read through [`RawTarget`], so a raw `>` in a path
//! (a subject wildcard, as curl sends it) reaches the routes as `%3E`.
//!
//! Bodies are limited where they are read (`publish::read_body`), as they
//! stream, so a large one is refused without being buffered.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::raw_target::RawTarget;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// A client must send a whole request head within this time once the
    /// server waits for one: on a new connection and between requests on a
    /// kept-alive one (slowloris, idle connections).
    pub header_read_timeout: Duration,
    /// Longest pause between two chunks of a request body (slow POST).
    pub body_read_timeout: Duration,
    /// Largest request head; beyond it the answer is 431.
    pub max_header_bytes: usize,
}

impl Limits {
    /// The limits jetway ships with.
    pub const BUILT_IN: Limits = Limits {
        max_connections: 1024,
        header_read_timeout: Duration::from_secs(10),
        body_read_timeout: Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::BUILT_IN
    }
}

/// Serves `router` on `listener` until `stop` is cancelled, then lets open
/// requests finish for up to `grace`.
pub async fn serve<S>(
    listener: TcpListener,
    router: S,
    limits: Limits,
    stop: CancellationToken,
    grace: Duration,
) where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        // Bounds the read buffer of every connection (memory under a
        // connection flood); it must hold a whole head of the largest size.
        .max_buf_size((limits.max_header_bytes + 1024).max(8192))
        .keep_alive(true);
    let body_timeout = limits.body_read_timeout;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = stop.cancelled() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |request: Request<Incoming>| {
                request.map(|body| Body::new(StallTimeout::new(body, body_timeout)))
            });
        let conn = graceful.watch(http.serve_connection(
            TokioIo::new(RawTarget::new(stream, limits.max_header_bytes)),
            TowerToHyperService::new(service),
        ));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::debug!("closing HTTP connections still open after the grace period");
        }
    }
}

/// A request body that fails once it stalls: no frame for `timeout`.
/// The timer is armed only while the body has nothing ready, so a body
/// that came with its head (most do) never registers one; tower-http's
/// `TimeoutBody` arms a timer for every frame.
struct StallTimeout {
    body: Incoming,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl StallTimeout {
    fn new(body: Incoming, timeout: Duration) -> StallTimeout {
        StallTimeout {
            body,
            timeout,
            stalled: None,
        }
    }
}

impl hyper::body::Body for StallTimeout {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.stalled = None;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let stalled = this
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(format!(
                "no part of the request body came for {timeout:?}"
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_limits_are_the_default() {
        assert_eq!(Limits::default(), Limits::BUILT_IN);
    }
}
