//! The HTTP stacks: the `/v1` API on `api.listen` and the health and metrics
//! routes on `metrics.listen`, each built in one function.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRef, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::FutureExt;
use http_body_util::BodyExt;
use subtle::ConstantTimeEq;
use tower::ServiceExt;

use crate::admin;
use crate::config::Secret;
use crate::delivery::Delivery;
use crate::error::ApiError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::publish::{self, Publisher};
use crate::reads::{self, Reads};
use crate::schemas::{self, Schemas};
use crate::subject::SubjectError;

/// What the `/v1` handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub publisher: Arc<Publisher>,
    pub delivery: Arc<Delivery>,
    pub js: async_nats::jetstream::Context,
    pub durability: Arc<crate::durability::Checker>,
    pub reads: Arc<Reads>,
    pub token: Option<Secret>,
    pub schemas: Arc<Schemas>,
}

/// The router's state: axum clones it for every request, so it is one Arc.
#[derive(Clone)]
struct Shared(Arc<ApiState>);

impl FromRef<Shared> for Arc<Publisher> {
    fn from_ref(Shared(s): &Shared) -> Self {
        s.publisher.clone()
    }
}

impl FromRef<Shared> for Arc<Delivery> {
    fn from_ref(Shared(s): &Shared) -> Self {
        s.delivery.clone()
    }
}

impl FromRef<Shared> for Arc<crate::durability::Checker> {
    fn from_ref(Shared(s): &Shared) -> Self {
        s.durability.clone()
    }
}

impl FromRef<Shared> for Arc<Reads> {
    fn from_ref(Shared(s): &Shared) -> Self {
        s.reads.clone()
    }
}

impl FromRef<Shared> for Arc<Schemas> {
    fn from_ref(Shared(s): &Shared) -> Self {
        s.schemas.clone()
    }
}

impl FromRef<Shared> for async_nats::jetstream::Context {
    fn from_ref(Shared(s): &Shared) -> Self {
        s.js.clone()
    }
}

/// The OpenAPI document kept in `docs/openapi.yaml`, as JSON.
pub fn openapi() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_norway::from_str(include_str!("../docs/openapi.yaml")).unwrap_or_else(
            |e| serde_json::json!({ "error": format!("openapi.yaml is invalid: {e}") }),
        )
    })
}

async fn openapi_json() -> Json<&'static serde_json::Value> {
    Json(openapi())
}

/// The credentials of `Authorization: Bearer <credentials>` (the scheme is
/// case-insensitive, RFC 9110).
fn bearer(headers: &HeaderMap) -> &[u8] {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return b"";
    };
    let value = value.as_bytes();
    match value.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &value[7..],
        _ => b"",
    }
}

/// What the token check needs: the token, and the publisher to count a
/// refused publish.
#[derive(Clone)]
struct Auth {
    token: Option<Secret>,
    publisher: Arc<Publisher>,
}

impl Auth {
    /// `Authorization: Bearer <api.token>`, compared in constant time (only
    /// the length of a wrong token can be timed, never how much of it was
    /// right). The 401 when it does not hold.
    fn refuse(&self, request: &Request) -> Option<Response> {
        let token = self.token.as_ref()?;
        let given = bearer(request.headers());
        if bool::from(given.ct_eq(token.expose().as_bytes())) {
            return None;
        }
        if request.uri().path().starts_with("/v1/publish") {
            self.publisher.record_refused(&ApiError::Unauthorized);
        }
        Some(ApiError::Unauthorized.into_response())
    }
}

/// The `/v1` API as one service: the token check (outside routing, so
/// unknown paths need the token too and reveal nothing), the router, JSON
/// bodies for the errors axum's extractors answer in plain text, and a
/// guard that turns a panic into a 500 JSON answer instead of a dropped
/// connection. Written out rather than as `from_fn` layers: each of those
/// boxes and clones the inner service on every request.
#[derive(Clone)]
pub struct Api {
    router: Router,
    auth: Arc<Auth>,
}

impl tower::Service<Request> for Api {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let (router, auth) = (self.router.clone(), self.auth.clone());
        Box::pin(async move {
            if let Some(refused) = auth.refuse(&request) {
                return Ok(refused);
            }
            let handled = AssertUnwindSafe(router.oneshot(request))
                .catch_unwind()
                .await;
            Ok(match handled {
                Ok(Ok(response)) => json_errors(response).await,
                Ok(Err(never)) => match never {},
                Err(_) => ApiError::Internal.into_response(),
            })
        })
    }
}

/// `POST /v1/publish/{subject}`, with a subject that does not even decode
/// (percent-encoded bytes that are not UTF-8) refused like any other bad
/// subject instead of with axum's plain-text answer.
async fn publish_one(
    State(publisher): State<Arc<Publisher>>,
    subject: Result<Path<String>, PathRejection>,
    request: Request,
) -> Response {
    // The request whole, not the `HeaderMap` extractor: that one clones.
    let (parts, body) = request.into_parts();
    match subject {
        Ok(subject) => publish::publish_one(State(publisher), subject, parts.headers, body).await,
        Err(_) => {
            let err = ApiError::SubjectInvalid(SubjectError::BadCharacter);
            publisher.record_refused(&err);
            err.into_response()
        }
    }
}

/// axum's own extractors answer in plain text (a path parameter that is
/// not UTF-8 or not a number, a bad query string); every error of the API
/// has the JSON body of SPEC section 3, so those are rewritten here.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct.as_bytes().starts_with(b"application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let message = match http_body_util::Limited::new(response.into_body(), 1024)
        .collect()
        .await
    {
        Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("bad request")
            .to_lowercase()
    } else {
        message
    };
    let err = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound(message),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(message),
        _ => ApiError::BadRequest(message),
    };
    let mut response = err.into_response();
    *response.status_mut() = status;
    response
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see GET /v1/openapi.json".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The `/v1` API.
pub fn router(state: ApiState) -> Api {
    // Shared behind one Arc each: axum clones a router's state for every
    // request.
    let auth = Arc::new(Auth {
        token: state.token.clone(),
        publisher: state.publisher.clone(),
    });
    let router = Router::new()
        .route("/v1/publish", post(publish::publish_batch))
        .route("/v1/publish/{*subject}", post(publish_one))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/subscriptions", get(admin::list_subscriptions))
        .route("/v1/subscriptions/{name}/pause", post(admin::pause))
        .route("/v1/subscriptions/{name}/resume", post(admin::resume))
        .route("/v1/subscriptions/{name}/reset", post(admin::reset))
        .route(
            "/v1/dead-letters/{subscription}",
            get(admin::list_dead_letters),
        )
        .route(
            "/v1/dead-letters/{subscription}/replay",
            post(admin::replay_dead_letters),
        )
        .route(
            "/v1/dead-letters/{subscription}/{dlq_sequence}",
            delete(admin::delete_dead_letter),
        )
        .route(
            "/v1/streams/{stream}/messages/{seq}",
            get(admin::get_message),
        )
        .route("/v1/subjects/{subject}/last", get(admin::last_message))
        .route("/v1/streams", get(crate::durability::list_streams))
        .route("/v1/subjects/{subject}/messages", get(reads::history))
        .route("/v1/subjects/{subject}/live", get(reads::live))
        .route("/v1/schemas", get(schemas::routes::list))
        .route(
            "/v1/schemas/{type}/versions",
            get(schemas::routes::versions).post(schemas::routes::register),
        )
        .route(
            "/v1/schemas/{type}/versions/{version}",
            get(schemas::routes::version),
        )
        .route(
            "/v1/schemas/{type}/config",
            get(schemas::routes::get_config).put(schemas::routes::put_config),
        )
        .route(
            "/v1/schemas/{type}/validate",
            post(schemas::routes::validate),
        )
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(Shared(Arc::new(state)));
    Api { router, auth }
}

#[derive(Clone)]
struct HealthState {
    health: Arc<Health>,
    metrics: Metrics,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<HealthState>) -> Response {
    match s.health.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<HealthState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// `/healthz`, `/readyz` and `/metrics` (SPEC section 7).
pub fn health_router(health: Arc<Health>, metrics_: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(HealthState {
            health,
            metrics: metrics_,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(
                header::AUTHORIZATION,
                axum::http::HeaderValue::from_static(v),
            );
            h
        };
        assert_eq!(bearer(&with("Bearer abc")), b"abc");
        assert_eq!(bearer(&with("bearer abc")), b"abc");
        assert_eq!(bearer(&with("BEARER abc")), b"abc");
        assert_eq!(bearer(&with("Basic abc")), b"");
        assert_eq!(bearer(&with("Bearer")), b"");
        assert_eq!(bearer(&HeaderMap::new()), b"");
    }

    #[test]
    fn the_openapi_document_is_valid_json() {
        let doc = openapi();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/v1/publish/{subject}"]["post"].is_object());
    }
}
