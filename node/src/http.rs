//! The node's HTTP listener: `/health` (process up), `/liveness` (sync task alive),
//! `/readiness` (ACL synced within `confirmations` of the head), `/metrics`
//! (Prometheus), `/acl` (the current ACL as JSON, as `hanzo-node acl show --json`
//! prints it), the OpenAI-compatible API under `/v1/`, the dashboard under
//! `/dashboard/` (see [`crate::dashboard`]), and git's smart HTTP under
//! `/<repo>.git/` (see [`crate::git`]). The API routes answer CORS for the node's
//! allowed web origins; git does not (a browser has no business there).

use std::sync::{Arc, atomic::AtomicU64};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::{acl::Acl, chain::Status, git::Git};

/// Labels of a metric counted by reason (replication and RPC metrics).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct Reason {
    pub(crate) reason: String,
}

/// What `/metrics` (and the gRPC `GetMetrics` stream) report on.
#[derive(Clone)]
pub struct Telemetry {
    /// The live ACL.
    pub acl: Acl,
    /// Chain sync progress.
    pub status: watch::Receiver<Status>,
    /// Git hosting.
    pub git: Git,
    /// Replication, when p2p is on.
    pub p2p: Option<Arc<crate::p2p::Metrics>>,
    /// gRPC, when it is on.
    pub rpc: Option<Arc<crate::rpc::Metrics>>,
    /// Inference.
    pub inference: Option<Arc<crate::inference::Metrics>>,
    /// The critical task whose failure stopped the node, once one did.
    pub failure: watch::Receiver<Option<crate::tasks::Failure>>,
}

#[derive(Clone)]
struct Shared {
    t: Telemetry,
    sync_alive: CancellationToken,
}

/// Serves the listener on `listener` until `cancel` fires. `sync_done` is cancelled
/// when the sync task ends; `extra` routes (the OpenAI API, the dashboard) and the
/// health and metrics routes answer CORS as `cors` says.
pub async fn serve(
    listener: TcpListener,
    telemetry: Telemetry,
    extra: Option<Router>,
    cors: Option<tower_http::cors::CorsLayer>,
    sync_done: CancellationToken,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let git = telemetry.git.clone();
    let shared = Shared {
        t: telemetry,
        sync_alive: sync_done,
    };
    let mut api = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/liveness", get(liveness))
        .route("/readiness", get(readiness))
        .route("/metrics", get(metrics))
        .route("/acl", get(acl_json))
        .with_state(shared)
        .merge(extra.unwrap_or_default());
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
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

async fn liveness(State(s): State<Shared>) -> impl IntoResponse {
    if s.sync_alive.is_cancelled() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "chain sync task has stopped\n".to_owned(),
        )
    } else {
        (StatusCode::OK, "ok\n".to_owned())
    }
}

async fn readiness(State(s): State<Shared>) -> impl IntoResponse {
    match s.t.not_ready() {
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
        None => {
            let st = s.t.status.borrow().clone();
            (
                StatusCode::OK,
                format!(
                    "ready: ACL at block {} of head {}\n",
                    st.synced.unwrap_or(0),
                    st.head
                ),
            )
        }
    }
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    match s.t.render() {
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

impl Telemetry {
    /// Why the node is not ready, if it is not: a critical task failed (it is
    /// stopping), or the ACL is not synced to within its confirmations.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(f) = self.failure.borrow().clone() {
            return Some(f.to_string());
        }
        let st = self.status.borrow().clone();
        if st.is_synced() {
            return None;
        }
        Some(match (&st.last_error, st.synced) {
            (Some(err), _) => format!("chain sync failing: {err}"),
            (None, None) => format!("not synced yet: head {}, nothing applied", st.head),
            (None, Some(n)) => format!(
                "syncing: ACL at block {n}, head {} ({} confirmations)",
                st.head, st.confirmations
            ),
        })
    }

    /// Every metric, in the Prometheus text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let st = self.status.borrow().clone();
        let snap = self.acl.snapshot();
        let now = crate::unix_now();
        let mut registry = Registry::default();
        let mut gauge = |name: &str, help: &str, value: u64| {
            let g = Gauge::<u64, AtomicU64>::default();
            g.set(value);
            registry.register(name, help, g);
        };
        gauge(
            "hanzo_chain_head_block",
            "Latest block number reported by the RPC",
            st.head,
        );
        gauge(
            "hanzo_chain_synced_block",
            "Latest block applied to the ACL",
            st.synced.unwrap_or(0),
        );
        gauge(
            "hanzo_chain_events_applied",
            "Contract logs applied to the ACL since deployment",
            snap.events_applied,
        );
        gauge(
            "hanzo_chain_reorgs",
            "Reorgs deeper than the confirmations rolled back since start",
            st.reorgs,
        );
        gauge(
            "hanzo_acl_age_seconds",
            "Seconds since the block the ACL reflects",
            now.saturating_sub(snap.block_time),
        );
        gauge(
            "hanzo_acl_operators",
            "Registered operators",
            snap.state.operators.len() as u64,
        );
        gauge(
            "hanzo_acl_identities",
            "Identities",
            snap.state.identities.len() as u64,
        );
        gauge(
            "hanzo_acl_repos",
            "Repositories",
            snap.state.repos.len() as u64,
        );
        let stats = self.git.stats();
        let count = |c: &AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        for (name, help, value) in [
            (
                "hanzo_git_pushes_accepted",
                "Pushes accepted since start",
                &stats.pushes_accepted,
            ),
            (
                "hanzo_git_pushes_refused",
                "Pushes refused since start",
                &stats.pushes_refused,
            ),
            (
                "hanzo_git_fetches",
                "Fetch requests served since start",
                &stats.fetches,
            ),
        ] {
            let c = Counter::<u64, AtomicU64>::default();
            c.inc_by(count(value));
            registry.register(name, help, c);
        }
        if let Some(p2p) = &self.p2p {
            p2p.register(&mut registry);
        }
        if let Some(inference) = &self.inference {
            inference.register(&mut registry);
        }
        if let Some(rpc) = &self.rpc {
            rpc.register(&mut registry);
        }
        let mut out = String::new();
        encode(&mut out, &registry)?;
        Ok(out)
    }
}

async fn acl_json(State(s): State<Shared>) -> impl IntoResponse {
    Json(crate::acl::view::json(&s.t.acl.snapshot()))
}
