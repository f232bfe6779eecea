//! The node's dashboard, served on the HTTP listener under `/dashboard/`: one page
//! and one script (built from `dashboard/` with the TypeScript client, and compiled
//! into the binary), plus `config.json` telling the page where the node's gRPC-Web
//! endpoint is. The page reads the ACL from `/acl` and everything else over gRPC-Web
//! once a wallet signed in.

use axum::{
    Json, Router,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect},
    routing::get,
};

const INDEX: &str = include_str!(concat!(env!("OUT_DIR"), "/index.html"));
const SCRIPT: &str = include_str!(concat!(env!("OUT_DIR"), "/app.js"));

/// What the page needs to know of the node.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Config {
    /// The gRPC listener's port (the page uses its own host name with it); none
    /// when gRPC is off.
    pub grpc_port: Option<u16>,
    /// The chain the node follows.
    pub chain_id: u64,
    /// The node's key.
    pub node: String,
}

/// The routes.
pub fn router(config: Config) -> Router {
    // The page talks to this node only: its own origin and the gRPC-Web port.
    let policy = "default-src 'self'; connect-src 'self' http: https:; style-src 'self' 'unsafe-inline'; img-src 'self' data:";
    let page = |content_type: &'static str, body: &'static str| {
        move || async move {
            (
                [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "no-cache"),
                    (header::CONTENT_SECURITY_POLICY, policy),
                ],
                body,
            )
        }
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/dashboard/") }))
        // Browsers ask for one; the page has none.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/dashboard", get(|| async { Redirect::to("/dashboard/") }))
        .route("/dashboard/", get(page("text/html; charset=utf-8", INDEX)))
        .route(
            "/dashboard/app.js",
            get(page("text/javascript; charset=utf-8", SCRIPT)),
        )
        .route(
            "/dashboard/config.json",
            get(move || async move { Json(config.clone()).into_response() }),
        )
}
