//! gRPC for staked callers (package `hanzo.node.v1`, `proto/`): one tonic server with
//! the node, auth, operator, repo and chain services and reflection (v1 and v1alpha),
//! over HTTP/2 and gRPC-Web. Layers, outermost first: CORS for the allowed web
//! origins (preflights answered before anything else), gRPC-Web translation, then
//! one layer ([`layer::AuthLayer`]) that authenticates every call, unary or
//! streaming, checks the caller's role, stake and session scope in the live ACL,
//! applies the caller's rate limit and counts the call. Its refusals pass back
//! through the gRPC-Web layer, so a browser reads them like any other status.

pub mod auth;
mod context;
pub mod eip712;
mod inference;
mod layer;
pub mod openai;
pub mod origins;
mod services;
pub mod siwe;
mod workloads;

use std::net::SocketAddr;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use auth::{Auth, Caller};
pub use context::Context;

use crate::{
    config::RpcConfig,
    metrics::{self, Reason},
};

const TARGET: &str = "hanzo::rpc";

/// The generated messages, clients and servers (built by the client crate).
pub use hanzo_node_client::proto;

/// Why the gRPC server could not start.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("rpc TLS: cannot read {path}: {source}")]
    Tls {
        path: String,
        source: std::io::Error,
    },
    #[error("rpc: {0}")]
    Server(String),
    #[error(transparent)]
    Origins(#[from] origins::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodCode {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// gRPC metrics (`hanzo_rpc_*`).
pub struct Metrics {
    requests: Family<MethodCode, Counter>,
    duration: Family<MethodLabel, Histogram>,
    auth_failures: Family<Reason, Counter>,
}

impl Metrics {
    /// The metrics, registered into `registry`.
    pub fn new(registry: &metrics::Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.0005, 2.0, 16,
                ))
            }),
            auth_failures: Family::default(),
        };
        registry.register(
            "hanzo_rpc_requests",
            "gRPC calls by method and status code",
            m.requests.clone(),
        );
        registry.register(
            "hanzo_rpc_request_duration_seconds",
            "gRPC calls: from the request to the response headers, by method",
            m.duration.clone(),
        );
        registry.register(
            "hanzo_rpc_auth_failures",
            "gRPC calls refused by authentication, by reason",
            m.auth_failures.clone(),
        );
        m
    }

    fn observe(&self, method: &str, code: &str, seconds: f64) {
        self.requests
            .get_or_create(&MethodCode {
                method: method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        self.duration
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    fn auth_failure(&self, reason: &str) {
        self.auth_failures.get_or_create(&Reason::new(reason)).inc();
    }
}

/// Binds the gRPC listener of `config`.
pub async fn bind(config: &RpcConfig) -> Result<TcpListener, Error> {
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Tls {
        path: path.display().to_string(),
        source,
    })
}

/// Serves gRPC on `listener` until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    config: RpcConfig,
    ctx: Context,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let mut server = Server::builder().accept_http1(true);
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
        if let Some(ca) = &config.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        server = server
            .tls_config(tls)
            .map_err(|e| Error::Server(e.to_string()))?;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Server(e.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Server(e.to_string()))?;
    let max = config.max_message_bytes;
    let layer = layer::AuthLayer::new(ctx.auth.clone(), ctx.metrics.clone(), max);
    // The first layer added is the outermost.
    let router = server
        .layer(ctx.auth.origins().cors())
        .layer(tonic_web::GrpcWebLayer::new())
        .layer(layer)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            proto::node_service_server::NodeServiceServer::new(ctx.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            proto::auth_service_server::AuthServiceServer::new(ctx.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            proto::operator_service_server::OperatorServiceServer::new(ctx.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            proto::repo_service_server::RepoServiceServer::new(ctx.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            proto::inference_service_server::InferenceServiceServer::new(ctx.clone())
                .max_decoding_message_size(max),
        )
        .add_service(
            proto::chain_service_server::ChainServiceServer::new(ctx)
                .max_decoding_message_size(max),
        );
    let incoming = accepted(listener, true);
    tracing::info!(target: TARGET, "gRPC serving");
    router
        .serve_with_incoming_shutdown(incoming, cancel.cancelled_owned())
        .await
        .map_err(|e| Error::Server(e.to_string()))
}

/// Serves the same services on `listener` with `caller` attached to every call and
/// no authentication: for `bench-rpc`'s baselines only (the cost of the auth layer is
/// the difference; with `no_delay` false, accepted sockets keep Nagle's algorithm, as
/// a stock tonic server's given a listener do). Never part of a node.
pub async fn serve_unauthenticated(
    listener: TcpListener,
    ctx: Context,
    caller: Caller,
    no_delay: bool,
    cancel: CancellationToken,
) -> Result<(), Error> {
    let attach = tower::util::MapRequestLayer::new(move |mut req: http::Request<_>| {
        req.extensions_mut().insert(caller.clone());
        req
    });
    Server::builder()
        .layer(attach)
        .add_service(proto::node_service_server::NodeServiceServer::new(
            ctx.clone(),
        ))
        .add_service(proto::chain_service_server::ChainServiceServer::new(ctx))
        .serve_with_incoming_shutdown(accepted(listener, no_delay), cancel.cancelled_owned())
        .await
        .map_err(|e| Error::Server(e.to_string()))
}

/// The connections `listener` accepts, with Nagle's algorithm off when `no_delay`: a
/// reply's trailers follow its message in a second small write, which would
/// otherwise wait for the caller's delayed ACK (about 40 ms on Linux) on every call
/// with a reply of more than a few hundred bytes.
fn accepted(
    listener: TcpListener,
    no_delay: bool,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures_util::StreamExt as _;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |conn| {
        let conn = conn?;
        if let Err(err) = conn.set_nodelay(no_delay) {
            tracing::debug!(target: TARGET, %err, "cannot set TCP_NODELAY");
        }
        Ok(conn)
    })
}

/// Every method path (`/hanzo.node.v1.Service/Method`) the protos define.
fn methods() -> std::collections::HashSet<String> {
    use prost::Message;
    let Ok(set) = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET) else {
        return Default::default();
    };
    let mut out = std::collections::HashSet::from([
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_owned(),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_owned(),
    ]);
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                out.insert(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    out
}
