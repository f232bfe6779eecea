//! The node's HTTP listener: `/health` (process up), `/liveness` (sync task alive),
//! `/readiness` (ACL synced within `confirmations` of the head), `/metrics`
//! (Prometheus, encoding [`crate::metrics::Registry`]), the EigenLayer node API
//! under `/eigen/node/` (see [`crate::eigen`]), `/acl` (the current ACL as JSON, as
//! `hanzo-node acl show --json` prints it), the OpenAI-compatible API under `/v1/`,
//! the dashboard under
//! `/dashboard/` (see [`crate::dashboard`]), and git's smart HTTP under
//! `/<repo>.git/` (see [`crate::git`]). The API routes answer CORS for the node's
//! allowed web origins; git does not (a browser has no business there).

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{acl::Acl, git::Git, health::Health, metrics};

/// What the HTTP listener reports on.
#[derive(Clone)]
pub struct Sources {
    /// The live ACL (`/acl`).
    pub acl: Acl,
    /// Readiness (`/liveness`, `/readiness`).
    pub health: Health,
    /// Every module's metrics (`/metrics`).
    pub metrics: metrics::Registry,
    /// Git hosting (`/<repo>.git/`).
    pub git: Git,
}

/// Serves the listener on `listener` until `cancel` fires. `extra` routes (the
/// OpenAI API, the dashboard) and the health and metrics routes answer CORS as
/// `cors` says.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    extra: Router,
    cors: Option<tower_http::cors::CorsLayer>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let git = sources.git.clone();
    let mut api = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/liveness", get(liveness))
        .route("/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .route("/acl", get(acl_json))
        .with_state(sources.clone())
        .merge(crate::eigen::router(sources.health))
        .merge(extra);
    if let Some(cors) = cors {
        api = api.layer(cors);
    }
    let app = api.merge(crate::git::router(git));
    // Nagle off, as on the gRPC listener: a small write after a large one must not
    // wait for the client's delayed ACK.
    let listener =
        axum::serve::ListenerExt::tap_io(listener, |conn: &mut tokio::net::TcpStream| {
            let _ = conn.set_nodelay(true);
        });
    // The peer's address reaches handlers (DNS-over-HTTPS limits each client's rate).
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(cancel.cancelled_owned())
    .await
}

async fn liveness(State(s): State<Sources>) -> impl IntoResponse {
    if s.health.sync_done.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "chain sync task has stopped\n".to_owned(),
        )
    } else {
        (StatusCode::OK, "ok\n".to_owned())
    }
}

async fn readiness(State(s): State<Sources>) -> impl IntoResponse {
    match s.health.not_ready() {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
        None => {
            let st = s.health.status.borrow().clone();
            let mut body = format!(
                "ready: ACL at block {} of head {}\n",
                st.synced.unwrap_or(0),
                st.head
            );
            for line in s.health.unloaded_models() {
                body.push_str(&line);
                body.push('\n');
            }
            (StatusCode::OK, body)
        }
    }
}

async fn metrics(State(s): State<Sources>) -> impl IntoResponse {
    match s.metrics.encode() {
        Ok(out) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            out,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/plain")],
            e.to_string(),
        ),
    }
}

async fn acl_json(State(s): State<Sources>) -> impl IntoResponse {
    Json(crate::acl::view::json(&s.acl.snapshot()))
}
