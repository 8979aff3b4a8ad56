//! The HTTP stacks: the `/v1` API on `api.listen` and the health and metrics
//! routes on `metrics.listen`, each built in one function.

use std::sync::{Arc, OnceLock};

use axum::extract::{FromRef, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;

use crate::admin;
use crate::config::Secret;
use crate::delivery::Delivery;
use crate::error::ApiError;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::publish::{self, Publisher};

/// What the `/v1` handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub publisher: Arc<Publisher>,
    pub delivery: Arc<Delivery>,
    pub js: async_nats::jetstream::Context,
    pub token: Option<Secret>,
}

impl FromRef<ApiState> for Arc<Publisher> {
    fn from_ref(s: &ApiState) -> Self {
        s.publisher.clone()
    }
}

impl FromRef<ApiState> for Arc<Delivery> {
    fn from_ref(s: &ApiState) -> Self {
        s.delivery.clone()
    }
}

impl FromRef<ApiState> for async_nats::jetstream::Context {
    fn from_ref(s: &ApiState) -> Self {
        s.js.clone()
    }
}

/// The OpenAPI document kept in `docs/openapi.yaml`, as JSON.
pub fn openapi() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        serde_yaml::from_str(include_str!("../docs/openapi.yaml"))
            .unwrap_or_else(|e| serde_json::json!({ "error": format!("openapi.yaml is invalid: {e}") }))
    })
}

async fn openapi_json() -> Json<&'static serde_json::Value> {
    Json(openapi())
}

/// `Authorization: Bearer <api.token>`, compared in constant time.
async fn require_token(State(token): State<Option<Secret>>, request: Request, next: Next) -> Response {
    if let Some(token) = &token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        if !bool::from(given.ct_eq(token.expose().as_bytes())) {
            return ApiError::Unauthorized.into_response();
        }
    }
    next.run(request).await
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route; see GET /v1/openapi.json".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The `/v1` API.
pub fn router(state: ApiState) -> Router {
    let token = state.token.clone();
    Router::new()
        .route("/v1/publish", post(publish::publish_batch))
        .route("/v1/publish/{*subject}", post(publish::publish_one))
        .route("/v1/openapi.json", get(openapi_json))
        .route("/v1/subscriptions", get(admin::list_subscriptions))
        .route("/v1/subscriptions/{name}/pause", post(admin::pause))
        .route("/v1/subscriptions/{name}/resume", post(admin::resume))
        .route("/v1/dead-letters/{subscription}", get(admin::list_dead_letters))
        .route("/v1/dead-letters/{subscription}/replay", post(admin::replay_dead_letters))
        .route(
            "/v1/dead-letters/{subscription}/{dlq_sequence}",
            delete(admin::delete_dead_letter),
        )
        .route("/v1/streams/{stream}/messages/{seq}", get(admin::get_message))
        .route("/v1/subjects/{subject}/last", get(admin::last_message))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .with_state(state)
        // Outside routing, so unknown /v1 paths need the token too and
        // reveal nothing; inside the panic guard below.
        .layer(middleware::from_fn_with_state(token, require_token))
        // Outermost: a bug answers 500 JSON instead of dropping the connection.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::Internal.into_response()
        }))
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
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")).into_response(),
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
    fn the_openapi_document_is_valid_json() {
        let doc = openapi();
        assert_eq!(doc["openapi"], "3.1.0");
        assert!(doc["paths"]["/v1/publish/{subject}"]["post"].is_object());
    }
}
