//! What every gRPC service reads ([`Context`]: the node's parts) and the helpers
//! they share: the signed-in caller, stream plumbing, conversions.

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_util::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use super::{Auth, Caller, Metrics};
use crate::{
    acl::{Acl, Role},
    chain,
    deploy::{Deployer, Principal},
    dns::Resolver,
    git::Git,
    health::Health,
    inference::Inference,
    keys::NodeId,
    metrics,
    p2p::P2p,
};

/// What the services read: the node's parts.
#[derive(Clone)]
pub struct Context {
    /// Sign-in and per-call checks.
    pub auth: Auth,
    /// gRPC metrics.
    pub metrics: Arc<Metrics>,
    /// The live ACL.
    pub acl: Acl,
    /// Chain sync progress.
    pub status: watch::Receiver<chain::Status>,
    /// This node's key.
    pub node: NodeId,
    /// The chain the node follows.
    pub chain_id: u64,
    /// Repos.
    pub git: Git,
    /// The swarm, when p2p is on.
    pub p2p: Option<P2p>,
    /// Node resolution over the DHT.
    pub resolver: Resolver,
    /// Readiness.
    pub health: Health,
    /// Every module's metrics (`GetMetrics`).
    pub registry: metrics::Registry,
    /// Workloads, unless `deploy.enabled` is off.
    pub deploy: Option<Deployer>,
    /// Idle time after which a log stream sends a keep-alive.
    pub keep_alive: Duration,
    /// Cancelled when the node stops: open streams end.
    pub closing: CancellationToken,
    /// Models, unless none are configured.
    pub inference: Option<Inference>,
}

/// The caller the auth layer attached to `req`.
pub(super) fn caller<T>(req: &Request<T>) -> Result<Caller, Status> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("sign in first"))
}

/// A server stream.
pub(super) type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Seconds as proto's `int64`.
pub(super) fn secs(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// A stream fed by a task through a bounded channel.
pub(super) fn async_stream<T, F, Fut>(f: F) -> Boxed<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Who a caller is to the deployer.
pub(super) fn principal(c: &Caller) -> Principal {
    Principal {
        address: c.address,
        admin: c.role == Role::Admin,
    }
}
