//! The one place where errors of the `/v1` API become HTTP answers with the
//! stable `code` of SPEC section 3, and publish outcomes become metric labels.
//! The errors of the parts below it (subjects, schemas) convert into
//! [`ApiError`] here, so those parts never depend on HTTP answers.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::schemas::{SchemaError, ValidationError, VersionViolation};
use crate::subject::SubjectError;

/// Everything the API can answer other than success.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    SubjectInvalid(#[from] SubjectError),
    #[error("{0}")]
    HeaderInvalid(String),
    #[error("{0}")]
    CloudEventInvalid(String),
    #[error("{0}")]
    BatchInvalid(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("subject {0} is not in publish.allow")]
    Forbidden(String),
    #[error("subject {0} is reserved (the JetStream and system API `$...`, reply inboxes `_INBOX.>`, jetway's dead letters `jetway.>`); nothing was sent")]
    SubjectReserved(String),
    #[error("no stream captures subject {0}")]
    NoStream(String),
    #[error("{message}")]
    Conflict {
        message: String,
        last_sequence: Option<u64>,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("too many publishes in flight; retry shortly")]
    Overloaded,
    #[error("{0} live reads are open (api.max_live); retry shortly")]
    TooManyLiveReads(usize),
    #[error("request bodies in memory stayed at jetway's limit of {0} bytes (8 x api.max_body) for nats.request_timeout; nothing was read or stored; retry shortly")]
    BodiesOverloaded(usize),
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    NatsUnavailable(String),
    #[error("jetway is shutting down; nothing was stored")]
    ShuttingDown,
    #[error("no PubAck from JetStream within {0:?}: the outcome is unknown; retrying with the same Idempotency-Key is safe")]
    Timeout(Duration),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("internal error")]
    Internal,
    #[error("{message}")]
    SchemaViolation {
        message: String,
        errors: Vec<ValidationError>,
    },
    #[error("{0}")]
    SchemaUnknownVersion(String),
    #[error("{0}")]
    SchemaUnknownType(String),
    #[error("{message}")]
    SchemaIncompatible {
        message: String,
        violations: Vec<VersionViolation>,
    },
    #[error("{0}")]
    SchemaInvalid(String),
    #[error("{0}")]
    TypeForbidden(String),
}

impl ApiError {
    /// The stable snake_case code of the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::SubjectInvalid(_) => "subject_invalid",
            ApiError::HeaderInvalid(_) => "header_invalid",
            ApiError::CloudEventInvalid(_) => "cloudevent_invalid",
            ApiError::BatchInvalid(_) => "batch_invalid",
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::SubjectReserved(_) => "subject_reserved",
            ApiError::NoStream(_) => "no_stream",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::Overloaded
            | ApiError::BodiesOverloaded(_)
            | ApiError::TooManyLiveReads(_) => "overloaded",
            ApiError::NatsUnavailable(_) => "nats_unavailable",
            ApiError::ShuttingDown => "shutting_down",
            ApiError::Timeout(_) => "timeout",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Internal => "internal",
            ApiError::SchemaViolation { .. } => "schema_violation",
            ApiError::SchemaUnknownVersion(_) => "schema_unknown_version",
            ApiError::SchemaUnknownType(_) => "schema_unknown_type",
            ApiError::SchemaIncompatible { .. } => "schema_incompatible",
            ApiError::SchemaInvalid(_) => "schema_invalid",
            ApiError::TypeForbidden(_) => "forbidden",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::SubjectInvalid(_)
            | ApiError::HeaderInvalid(_)
            | ApiError::CloudEventInvalid(_)
            | ApiError::BatchInvalid(_)
            | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) | ApiError::SubjectReserved(_) => StatusCode::FORBIDDEN,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::NoStream(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Overloaded
            | ApiError::BodiesOverloaded(_)
            | ApiError::TooManyLiveReads(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NatsUnavailable(_) | ApiError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::SchemaUnknownVersion(_) => StatusCode::BAD_REQUEST,
            ApiError::SchemaViolation { .. }
            | ApiError::SchemaUnknownType(_)
            | ApiError::SchemaInvalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::SchemaIncompatible { .. } => StatusCode::CONFLICT,
            ApiError::TypeForbidden(_) => StatusCode::FORBIDDEN,
        }
    }

    /// The `outcome` label of `jetway_publish_total`.
    pub fn publish_outcome(&self) -> &'static str {
        match self {
            ApiError::SubjectInvalid(_)
            | ApiError::HeaderInvalid(_)
            | ApiError::CloudEventInvalid(_)
            | ApiError::BatchInvalid(_)
            | ApiError::BadRequest(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::SchemaViolation { .. }
            | ApiError::SchemaUnknownVersion(_)
            | ApiError::SchemaUnknownType(_)
            | ApiError::SchemaIncompatible { .. }
            | ApiError::SchemaInvalid(_) => "invalid",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) | ApiError::SubjectReserved(_) | ApiError::TypeForbidden(_) => {
                "forbidden"
            }
            ApiError::NoStream(_) => "no_stream",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge(_) => "too_large",
            // Like a 504: sent, and whether it was stored is unknown.
            ApiError::BadGateway(_) => "timeout",
            ApiError::Overloaded
            | ApiError::BodiesOverloaded(_)
            | ApiError::TooManyLiveReads(_) => "overloaded",
            ApiError::NatsUnavailable(_) | ApiError::ShuttingDown | ApiError::Internal => {
                "unavailable"
            }
            ApiError::Timeout(_) => "timeout",
        }
    }

    /// The `{"error":{...}}` body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let ApiError::Conflict {
            last_sequence: Some(seq),
            ..
        } = self
        {
            error["last_sequence"] = json!(seq);
        }
        match self {
            ApiError::SchemaViolation { errors, .. } => error["errors"] = json!(errors),
            ApiError::SchemaIncompatible { violations, .. } => {
                error["violations"] = json!(violations)
            }
            _ => {}
        }
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<SchemaError> for ApiError {
    fn from(e: SchemaError) -> Self {
        let message = e.to_string();
        match e {
            SchemaError::Violation { errors, .. } => ApiError::SchemaViolation { message, errors },
            SchemaError::UnknownVersion(m) => ApiError::SchemaUnknownVersion(m),
            SchemaError::UnknownType(m) => ApiError::SchemaUnknownType(m),
            SchemaError::Incompatible { violations, .. } => ApiError::SchemaIncompatible {
                message,
                violations,
            },
            SchemaError::Invalid(_) => ApiError::SchemaInvalid(message),
            SchemaError::Forbidden(m) => ApiError::TypeForbidden(m),
            SchemaError::BadRequest(m) => ApiError::BadRequest(m),
            SchemaError::Header(m) => ApiError::HeaderInvalid(m),
            SchemaError::NotFound(m) => ApiError::NotFound(m),
            SchemaError::Unavailable(m) => ApiError::NatsUnavailable(m),
        }
    }
}

/// The schema routes answer with their own refusals.
impl IntoResponse for SchemaError {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_distinct_code_and_the_spec_status() {
        let table: Vec<(ApiError, u16, &str, &str)> = vec![
            (
                SubjectError::Empty.into(),
                400,
                "subject_invalid",
                "invalid",
            ),
            (
                ApiError::HeaderInvalid("x".into()),
                400,
                "header_invalid",
                "invalid",
            ),
            (
                ApiError::CloudEventInvalid("x".into()),
                400,
                "cloudevent_invalid",
                "invalid",
            ),
            (
                ApiError::BatchInvalid("x".into()),
                400,
                "batch_invalid",
                "invalid",
            ),
            (ApiError::Unauthorized, 401, "unauthorized", "unauthorized"),
            (
                ApiError::Forbidden("a".into()),
                403,
                "forbidden",
                "forbidden",
            ),
            (
                ApiError::SubjectReserved("$JS.API.INFO".into()),
                403,
                "subject_reserved",
                "forbidden",
            ),
            (
                ApiError::BadGateway("x".into()),
                502,
                "bad_gateway",
                "timeout",
            ),
            (
                ApiError::NoStream("a".into()),
                404,
                "no_stream",
                "no_stream",
            ),
            (
                ApiError::Conflict {
                    message: "x".into(),
                    last_sequence: Some(3),
                },
                409,
                "conflict",
                "conflict",
            ),
            (
                ApiError::PayloadTooLarge("x".into()),
                413,
                "payload_too_large",
                "too_large",
            ),
            (ApiError::Overloaded, 429, "overloaded", "overloaded"),
            (
                ApiError::NatsUnavailable("x".into()),
                503,
                "nats_unavailable",
                "unavailable",
            ),
            (ApiError::ShuttingDown, 503, "shutting_down", "unavailable"),
            (
                ApiError::Timeout(Duration::from_secs(5)),
                504,
                "timeout",
                "timeout",
            ),
        ];
        let mut codes = std::collections::HashSet::new();
        for (err, status, code, outcome) in table {
            assert_eq!(err.status().as_u16(), status, "{err:?}");
            assert_eq!(err.code(), code);
            assert_eq!(err.publish_outcome(), outcome);
            assert!(codes.insert(code), "duplicate code {code}");
        }
        // Two causes of the same answer: both shed load.
        let bodies = ApiError::BodiesOverloaded(1);
        assert_eq!(
            (
                bodies.status().as_u16(),
                bodies.code(),
                bodies.publish_outcome()
            ),
            (429, "overloaded", "overloaded")
        );
    }

    #[test]
    fn schema_refusals_answer_their_spec_status_and_code() {
        let table: Vec<(SchemaError, u16, &str)> = vec![
            (
                SchemaError::Violation {
                    message: "x".into(),
                    errors: Vec::new(),
                },
                422,
                "schema_violation",
            ),
            (
                SchemaError::UnknownVersion("x".into()),
                400,
                "schema_unknown_version",
            ),
            (
                SchemaError::UnknownType("x".into()),
                422,
                "schema_unknown_type",
            ),
            (
                SchemaError::Incompatible {
                    mode: crate::schemas::Mode::Backward,
                    violations: Vec::new(),
                },
                409,
                "schema_incompatible",
            ),
            (SchemaError::Invalid("x".into()), 422, "schema_invalid"),
            (SchemaError::Forbidden("x".into()), 403, "forbidden"),
            (SchemaError::BadRequest("x".into()), 400, "bad_request"),
            (SchemaError::Header("x".into()), 400, "header_invalid"),
            (SchemaError::NotFound("x".into()), 404, "not_found"),
            (
                SchemaError::Unavailable("x".into()),
                503,
                "nats_unavailable",
            ),
        ];
        for (err, status, code) in table {
            let answer = ApiError::from(err);
            assert_eq!(
                (answer.status().as_u16(), answer.code()),
                (status, code),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn conflict_body_carries_last_sequence() {
        let body = ApiError::Conflict {
            message: "wrong last sequence".into(),
            last_sequence: Some(7),
        }
        .body();
        assert_eq!(body["error"]["code"], "conflict");
        assert_eq!(body["error"]["last_sequence"], 7);
    }

    #[test]
    fn shed_and_unavailable_answers_carry_retry_after() {
        for err in [ApiError::Overloaded, ApiError::ShuttingDown] {
            let resp = err.into_response();
            assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
        }
        let resp = ApiError::Timeout(Duration::from_secs(1)).into_response();
        assert!(resp.headers().get(header::RETRY_AFTER).is_none());
    }
}
