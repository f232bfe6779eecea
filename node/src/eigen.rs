//! The EigenLayer AVS node API (spec version v0.0.1), so operators' AVS tooling
//! reads this node as it reads any AVS node:
//!
//! * `GET /eigen/node/spec-version` → `{"api_version": "v0.0.1"}`;
//! * `GET /eigen/node/version` → `{"version": "hanzo-node/v<crate version>"}`;
//! * `GET /eigen/node/health` → 200 healthy, 206 partially healthy (initializing,
//!   or a part other than chain sync is down), 503 unhealthy;
//! * `GET /eigen/node/services` → the node's parts (see [`crate::health::Service`]);
//! * `GET /eigen/node/services/{id}/health` → 200, 206 or 503 for one part, 404 for
//!   an id the node does not run.
//!
//! Any of them with `?version=` other than the one served answers 404
//! `{"message": "API version not found"}`, as the spec asks.

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::json;

use crate::health::Health;

/// The spec version served.
pub const SPEC_VERSION: &str = "v0.0.1";

#[derive(Deserialize)]
struct Version {
    version: Option<String>,
}

/// The `/eigen/node/*` routes.
pub fn router(health: Health) -> Router {
    Router::new()
        .route("/eigen/node/spec-version", get(spec_version))
        .route("/eigen/node/version", get(node_version))
        .route("/eigen/node/health", get(node_health))
        .route("/eigen/node/services", get(services))
        .route("/eigen/node/services/{id}/health", get(service_health))
        .with_state(health)
}

/// The 404 the spec prescribes for an unknown `?version=`, if it is one.
fn unsupported(q: &Version) -> Option<Response> {
    let v = q.version.as_deref()?;
    (v.trim_start_matches('v') != SPEC_VERSION.trim_start_matches('v')).then(|| {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "message": "API version not found" })),
        )
            .into_response()
    })
}

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

async fn spec_version(Query(q): Query<Version>) -> Response {
    unsupported(&q).unwrap_or_else(|| Json(json!({ "api_version": SPEC_VERSION })).into_response())
}

async fn node_version(Query(q): Query<Version>) -> Response {
    unsupported(&q).unwrap_or_else(|| {
        let version = concat!("hanzo-node/v", env!("CARGO_PKG_VERSION"));
        Json(json!({ "version": version })).into_response()
    })
}

async fn node_health(State(h): State<Health>, Query(q): Query<Version>) -> Response {
    unsupported(&q).unwrap_or_else(|| status(h.overall().http_status()).into_response())
}

async fn services(State(h): State<Health>, Query(q): Query<Version>) -> Response {
    unsupported(&q).unwrap_or_else(|| Json(json!({ "services": h.services() })).into_response())
}

async fn service_health(
    State(h): State<Health>,
    Path(id): Path<String>,
    Query(q): Query<Version>,
) -> Response {
    unsupported(&q).unwrap_or_else(|| match h.services().into_iter().find(|s| s.id == id) {
        Some(s) => status(s.status.http_status()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "message": format!("no service {id}: see /eigen/node/services") })),
        )
            .into_response(),
    })
}
