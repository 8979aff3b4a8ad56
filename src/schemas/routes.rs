//! The `/v1/schemas` routes (SPEC section 9). Reads and validation answer
//! from memory; registration and settings write to the bucket. Refusals are
//! [`SchemaError`]s; `crate::error` turns them into answers like every other
//! error of the API.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde_json::{json, Value};

use super::registry::Lookup;
use super::{check_type_name, Mode, SchemaError, Schemas, SCHEMA_VERSION_HEADER};

fn known(schemas: &Schemas, event_type: &str) -> Result<super::registry::TypeState, SchemaError> {
    check_type_name(event_type)?;
    match schemas.registry().get(event_type) {
        Some(t) if !t.versions.is_empty() => Ok(t),
        _ => Err(SchemaError::NotFound(format!(
            "type `{event_type}` has no schema"
        ))),
    }
}

/// `GET /v1/schemas`.
pub async fn list(State(schemas): State<Arc<Schemas>>) -> Json<Value> {
    let types: Vec<Value> = schemas
        .registry()
        .types()
        .into_iter()
        .filter(|(_, t)| !t.versions.is_empty())
        .map(|(name, t)| {
            json!({
                "type": name,
                "latest": t.versions.keys().next_back(),
                "versions": t.versions.keys().collect::<Vec<_>>(),
                "compatibility": t.compatibility.unwrap_or(schemas.config().compatibility).as_str(),
            })
        })
        .collect();
    Json(json!({ "types": types }))
}

fn flag(query: &HashMap<String, String>, name: &str) -> Result<bool, SchemaError> {
    match query.get(name).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") | Some("") => Ok(true),
        Some(other) => Err(SchemaError::BadRequest(format!(
            "{name} must be true or false, got `{other}`"
        ))),
    }
}

/// `POST /v1/schemas/{type}/versions[?dry_run=true]`.
pub async fn register(
    State(schemas): State<Arc<Schemas>>,
    Path(event_type): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Response, SchemaError> {
    let dry_run = flag(&query, "dry_run")?;
    let registered = schemas.register(&event_type, &body, dry_run).await?;
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut answer = json!({ "type": registered.event_type, "version": registered.version });
    if dry_run {
        answer["dry_run"] = json!(true);
    }
    Ok((status, Json(answer)).into_response())
}

/// `GET /v1/schemas/{type}/versions`.
pub async fn versions(
    State(schemas): State<Arc<Schemas>>,
    Path(event_type): Path<String>,
) -> Result<Json<Value>, SchemaError> {
    let t = known(&schemas, &event_type)?;
    Ok(Json(
        json!({ "versions": t.versions.keys().collect::<Vec<_>>() }),
    ))
}

fn version_param(v: &str) -> Result<Option<u32>, SchemaError> {
    if v == "latest" {
        return Ok(None);
    }
    v.parse::<u32>().map(Some).map_err(|_| {
        SchemaError::BadRequest(format!("version must be a number or latest, got `{v}`"))
    })
}

/// `GET /v1/schemas/{type}/versions/{N|latest}`.
pub async fn version(
    State(schemas): State<Arc<Schemas>>,
    Path((event_type, v)): Path<(String, String)>,
) -> Result<Response, SchemaError> {
    check_type_name(&event_type)?;
    let n = version_param(&v)?;
    match schemas.registry().version(&event_type, n) {
        Lookup::Found(n, version) => {
            let mut response = version.raw.clone().into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/schema+json"),
            );
            headers.insert(SCHEMA_VERSION_HEADER, HeaderValue::from(n));
            Ok(response)
        }
        Lookup::UnknownType => Err(SchemaError::NotFound(format!(
            "type `{event_type}` has no schema"
        ))),
        Lookup::UnknownVersion => Err(SchemaError::NotFound(format!(
            "type `{event_type}` has no version {v}"
        ))),
    }
}

/// `GET /v1/schemas/{type}/config`.
pub async fn get_config(
    State(schemas): State<Arc<Schemas>>,
    Path(event_type): Path<String>,
) -> Result<Json<Value>, SchemaError> {
    check_type_name(&event_type)?;
    match schemas.registry().get(&event_type) {
        Some(t) => Ok(Json(json!({
            "compatibility": t.compatibility.unwrap_or(schemas.config().compatibility).as_str()
        }))),
        None => Err(SchemaError::NotFound(format!(
            "type `{event_type}` has no schema"
        ))),
    }
}

/// `PUT /v1/schemas/{type}/config`: `{"compatibility": "<mode>"}`. A type
/// may be configured before its first version.
pub async fn put_config(
    State(schemas): State<Arc<Schemas>>,
    Path(event_type): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, SchemaError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| SchemaError::BadRequest(format!("the body is not JSON: {e}")))?;
    let mode = value
        .get("compatibility")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            SchemaError::BadRequest("the body must be {\"compatibility\": \"<mode>\"}".into())
        })?;
    let mode = Mode::parse(mode).ok_or_else(|| {
        SchemaError::BadRequest(format!(
            "`{mode}` is not a mode (none, backward, backward_transitive, forward, forward_transitive, full, full_transitive)"
        ))
    })?;
    schemas.set_mode(&event_type, mode).await?;
    Ok(Json(json!({ "compatibility": mode.as_str() })))
}

/// `POST /v1/schemas/{type}/validate[?version=N]`: nothing is stored.
pub async fn validate(
    State(schemas): State<Arc<Schemas>>,
    Path(event_type): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: Bytes,
) -> Result<Json<Value>, SchemaError> {
    check_type_name(&event_type)?;
    let n = match query.get("version") {
        Some(v) => version_param(v)?,
        None => None,
    };
    let instance: Value = serde_json::from_slice(&body)
        .map_err(|e| SchemaError::BadRequest(format!("the body is not JSON: {e}")))?;
    match schemas.registry().version(&event_type, n) {
        Lookup::Found(n, version) => {
            let errors = version.compiled.errors(&instance);
            Ok(Json(if errors.is_empty() {
                json!({ "valid": true, "version": n })
            } else {
                json!({ "valid": false, "version": n, "errors": errors })
            }))
        }
        Lookup::UnknownType => Err(SchemaError::NotFound(format!(
            "type `{event_type}` has no schema"
        ))),
        Lookup::UnknownVersion => Err(SchemaError::NotFound(format!(
            "type `{event_type}` has no version {}",
            n.unwrap_or(0)
        ))),
    }
}
