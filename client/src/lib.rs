//! A client for hanzo-node's gRPC (`hanzo.node.v1`): connect (TLS, mTLS, timeouts),
//! sign in with an Ethereum key (SIWE, as a wallet would) and keep the session fresh,
//! then typed calls — deploy (spec or compose file), stop, remove, scale, list,
//! inspect, logs, events, exec sessions, inference and status. [`compose`] has the
//! `docker compose`-style commands on top.
//!
//! ```no_run
//! # async fn demo() -> Result<(), hanzo_node_client::Error> {
//! use hanzo_node_client::{Client, Connect};
//! let key = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d".parse().unwrap();
//! let client = Client::connect(&Connect::new("http://127.0.0.1:8690"), key).await?;
//! let app = std::fs::read_to_string("docker-compose.yml").unwrap();
//! let status = client.deploy_compose(&app, Some("shop")).await?;
//! println!("{} replicas", status.containers.len());
//! # Ok(()) }
//! ```

pub mod compose;
pub mod siwe;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use alloy::signers::{SignerSync, local::PrivateKeySigner};
use tokio::sync::mpsc;
use tonic::{
    Request, Status, Streaming,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

/// The generated messages, clients and servers of `proto/hanzo/node/v1`.
#[allow(missing_docs, clippy::all, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("hanzo.node.v1");

    /// The encoded descriptors of every `.proto`, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/hanzo_descriptor.bin"));
}

use proto::{
    auth_service_client::AuthServiceClient, inference_service_client::InferenceServiceClient,
    node_service_client::NodeServiceClient,
};

/// A session is renewed when it has less than this left.
const REFRESH_BEFORE: Duration = Duration::from_secs(60);

/// What went wrong, for people.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{url:?} is not a gRPC URL like http://127.0.0.1:8690: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot reach the node's gRPC at {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("sign-in refused ({:?}): {}", .0.code(), .0.message())]
    SignIn(Status),
    #[error("{:?}: {}", .0.code(), .0.message())]
    Call(#[from] Status),
    #[error("{0}")]
    Local(String),
}

impl Error {
    /// The gRPC status, when the node answered with one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Self::SignIn(s) | Self::Call(s) => Some(s),
            _ => None,
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Connect {
    /// `http://host:port`, or `https://…` with [`Connect::tls`].
    pub url: String,
    /// To establish the connection.
    pub connect_timeout: Duration,
    /// Per unary call; streams are not cut.
    pub timeout: Option<Duration>,
    /// The node's CA (PEM), to verify its certificate; none: the system's roots.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and key (PEM), for a node that asks for mTLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the node's certificate carries, when not the URL's host.
    pub domain: Option<String>,
}

impl Connect {
    /// Plain settings for `url`: 5 s to connect, no call timeout, TLS for `https`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            ca_pem: None,
            identity_pem: None,
            domain: None,
        }
    }

    async fn channel(&self) -> Result<Channel, Error> {
        let bad = |reason: String| Error::Url {
            url: self.url.clone(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(t) = self.timeout {
            endpoint = endpoint.timeout(t);
        }
        if self.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_enabled_roots();
            if let Some(ca) = &self.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &self.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &self.domain {
                tls = tls.domain_name(d.clone());
            }
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(e.to_string()))?;
        }
        endpoint.connect().await.map_err(|e| Error::Connect {
            url: self.url.clone(),
            reason: std::error::Error::source(&e)
                .map_or_else(|| e.to_string(), ToString::to_string),
        })
    }
}

struct Session {
    token: String,
    /// Unix seconds.
    expires_at: i64,
}

/// A signed-in connection to one node; cheap to clone.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    key: PrivateKeySigner,
    session: Arc<Mutex<Session>>,
    /// One renewal at a time.
    renewing: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.key.address())
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Signs in to the node on `channel` as `key`: a SIWE message with the node's nonce,
/// domain, URI and chain id, signed as a wallet signs it.
async fn sign_in(channel: Channel, key: &PrivateKeySigner) -> Result<Session, Error> {
    let mut auth = AuthServiceClient::new(channel);
    let n = auth
        .get_nonce(proto::GetNonceRequest {})
        .await
        .map_err(Error::SignIn)?
        .into_inner();
    let now = unix_now();
    let message = siwe::message(&siwe::Message {
        domain: n.domain,
        address: key.address(),
        uri: n.uri,
        chain_id: n.chain_id,
        nonce: n.nonce,
        issued_at: now,
        // Used at once; the session it opens lasts as the node says.
        expires_at: Some(now + 300),
        statement: Some("Sign in to a hanzo node.".into()),
        ..Default::default()
    });
    let signature = key
        .sign_message_sync(message.as_bytes())
        .map_err(|e| Error::Local(format!("cannot sign the sign-in message: {e}")))?;
    let r = auth
        .sign_in(proto::SignInRequest {
            message,
            signature: signature.as_bytes().to_vec(),
        })
        .await
        .map_err(Error::SignIn)?
        .into_inner();
    Ok(Session {
        token: r.token,
        expires_at: r.expires_at,
    })
}

/// One command running in a container: write its input, resize its terminal, read
/// its output until [`Output::Exit`].
#[derive(Debug)]
pub struct ExecSession {
    input: mpsc::Sender<proto::ExecInput>,
    output: Streaming<proto::ExecOutput>,
}

/// A piece of an exec's output.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Bytes on standard output (or the terminal).
    Stdout(Vec<u8>),
    /// Bytes on standard error.
    Stderr(Vec<u8>),
    /// The exit code; the last item.
    Exit(i32),
}

impl ExecSession {
    async fn send(&self, input: proto::exec_input::Input) -> Result<(), Error> {
        self.input
            .send(proto::ExecInput { input: Some(input) })
            .await
            .map_err(|_| Error::Local("the exec has ended".into()))
    }

    /// Writes to its standard input.
    pub async fn write(&self, bytes: Vec<u8>) -> Result<(), Error> {
        self.send(proto::exec_input::Input::Stdin(bytes)).await
    }

    /// Closes its standard input.
    pub async fn close_stdin(&self) -> Result<(), Error> {
        self.send(proto::exec_input::Input::StdinEof(true)).await
    }

    /// Sets its terminal's size.
    pub async fn resize(&self, rows: u32, cols: u32) -> Result<(), Error> {
        self.send(proto::exec_input::Input::Resize(proto::TerminalSize {
            rows,
            cols,
        }))
        .await
    }

    /// A handle that writes input while another task reads output.
    pub fn input(&self) -> mpsc::Sender<proto::ExecInput> {
        self.input.clone()
    }

    /// The next piece of output; `None` once the stream ended.
    pub async fn next(&mut self) -> Result<Option<Output>, Error> {
        use proto::exec_output::Output as O;
        loop {
            let Some(item) = self.output.message().await? else {
                return Ok(None);
            };
            match item.output {
                Some(O::Stdout(b)) => return Ok(Some(Output::Stdout(b))),
                Some(O::Stderr(b)) => return Ok(Some(Output::Stderr(b))),
                Some(O::ExitCode(c)) => return Ok(Some(Output::Exit(c))),
                None => {}
            }
        }
    }
}

impl Client {
    /// Connects and signs in as `key`.
    pub async fn connect(c: &Connect, key: PrivateKeySigner) -> Result<Self, Error> {
        let channel = c.channel().await?;
        let session = sign_in(channel.clone(), &key).await?;
        Ok(Self {
            channel,
            key,
            session: Arc::new(Mutex::new(session)),
            renewing: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The signed-in address.
    pub fn address(&self) -> alloy::primitives::Address {
        self.key.address()
    }

    /// A token with at least a minute left: the current one, else refreshed (or, when
    /// the node will not refresh it, a new sign-in).
    pub async fn token(&self) -> Result<String, Error> {
        let fresh = |s: &Session| {
            i64::try_from(unix_now() + REFRESH_BEFORE.as_secs()).is_ok_and(|t| s.expires_at > t)
        };
        {
            let s = lock(&self.session);
            if fresh(&s) {
                return Ok(s.token.clone());
            }
        }
        let _one = self.renewing.lock().await;
        let old = {
            let s = lock(&self.session);
            if fresh(&s) {
                return Ok(s.token.clone());
            }
            s.token.clone()
        };
        let refreshed = AuthServiceClient::new(self.channel.clone())
            .refresh(proto::RefreshRequest { token: old })
            .await;
        let session = match refreshed {
            Ok(r) => {
                let r = r.into_inner();
                Session {
                    token: r.token,
                    expires_at: r.expires_at,
                }
            }
            Err(_) => sign_in(self.channel.clone(), &self.key).await?,
        };
        let token = session.token.clone();
        *lock(&self.session) = session;
        Ok(token)
    }

    async fn req<T>(&self, msg: T) -> Result<Request<T>, Error> {
        Ok(bearer(msg, &self.token().await?))
    }

    fn node(&self) -> NodeServiceClient<Channel> {
        NodeServiceClient::new(self.channel.clone())
    }

    /// The node's status.
    pub async fn status(&self) -> Result<proto::GetStatusResponse, Error> {
        let r = self.req(proto::GetStatusRequest {}).await?;
        Ok(self.node().get_status(r).await?.into_inner())
    }

    /// Deploys a structured spec (replacing a deployment of the same name).
    pub async fn deploy(&self, spec: proto::DeploySpec) -> Result<proto::DeploymentStatus, Error> {
        self.deploy_request(proto::DeployRequest {
            spec: Some(spec),
            ..Default::default()
        })
        .await
    }

    /// Deploys a compose file; `name` overrides its top-level `name`.
    pub async fn deploy_compose(
        &self,
        yaml: &str,
        name: Option<&str>,
    ) -> Result<proto::DeploymentStatus, Error> {
        self.deploy_request(proto::DeployRequest {
            compose: yaml.to_owned(),
            name: name.unwrap_or_default().to_owned(),
            ..Default::default()
        })
        .await
    }

    async fn deploy_request(
        &self,
        r: proto::DeployRequest,
    ) -> Result<proto::DeploymentStatus, Error> {
        let r = self.req(r).await?;
        let done = self.node().deploy(r).await?.into_inner();
        done.status
            .ok_or_else(|| Error::Local("the node answered Deploy without a status".into()))
    }

    fn dep(deployment: &str) -> proto::DeploymentRef {
        proto::DeploymentRef {
            deployment: deployment.to_owned(),
        }
    }

    /// Stops every replica; the deployment stays, stopped.
    pub async fn stop(&self, deployment: &str) -> Result<proto::DeploymentStatus, Error> {
        let r = self.req(Self::dep(deployment)).await?;
        Ok(self.node().stop(r).await?.into_inner())
    }

    /// Stops and removes a deployment (its named volumes stay).
    pub async fn remove(&self, deployment: &str) -> Result<(), Error> {
        let r = self.req(Self::dep(deployment)).await?;
        self.node().remove(r).await?;
        Ok(())
    }

    /// Sets a service's replica count.
    pub async fn scale(
        &self,
        deployment: &str,
        service: &str,
        replicas: u32,
    ) -> Result<proto::DeploymentStatus, Error> {
        let r = self
            .req(proto::ScaleRequest {
                deployment: deployment.to_owned(),
                service: service.to_owned(),
                replicas,
            })
            .await?;
        Ok(self.node().scale(r).await?.into_inner())
    }

    /// The caller's replicas (of `deployment`, or all).
    pub async fn list(&self, deployment: &str) -> Result<Vec<proto::ContainerStatus>, Error> {
        let r = self
            .req(proto::ListContainersRequest {
                deployment: deployment.to_owned(),
            })
            .await?;
        Ok(self
            .node()
            .list_containers(r)
            .await?
            .into_inner()
            .containers)
    }

    /// One replica.
    pub async fn inspect(
        &self,
        deployment: &str,
        container: &str,
    ) -> Result<proto::ContainerStatus, Error> {
        let r = self
            .req(proto::ContainerRef {
                deployment: deployment.to_owned(),
                container: container.to_owned(),
            })
            .await?;
        Ok(self.node().inspect_container(r).await?.into_inner())
    }

    /// Makes the caller's named volume (nothing when it exists).
    pub async fn create_volume(&self, name: &str) -> Result<proto::Owned, Error> {
        let r = self
            .req(proto::VolumeRef {
                name: name.to_owned(),
            })
            .await?;
        Ok(self.node().create_volume(r).await?.into_inner())
    }

    /// The caller's volumes, with the deployments that mount them.
    pub async fn volumes(&self) -> Result<Vec<proto::Owned>, Error> {
        let r = self.req(proto::ListOwnedRequest {}).await?;
        Ok(self.node().list_volumes(r).await?.into_inner().items)
    }

    /// Removes the caller's volume (refused while a deployment mounts it).
    pub async fn remove_volume(&self, name: &str) -> Result<(), Error> {
        let r = self
            .req(proto::VolumeRef {
                name: name.to_owned(),
            })
            .await?;
        self.node().remove_volume(r).await?;
        Ok(())
    }

    /// Makes a network the caller's deployments can share (docker runtime).
    pub async fn create_network(&self, name: &str) -> Result<proto::Owned, Error> {
        let r = self
            .req(proto::NetworkRef {
                name: name.to_owned(),
            })
            .await?;
        Ok(self.node().create_network(r).await?.into_inner())
    }

    /// The caller's shared networks, with the deployments that join them.
    pub async fn networks(&self) -> Result<Vec<proto::Owned>, Error> {
        let r = self.req(proto::ListOwnedRequest {}).await?;
        Ok(self.node().list_networks(r).await?.into_inner().items)
    }

    /// Removes the caller's network (refused while a deployment joins it).
    pub async fn remove_network(&self, name: &str) -> Result<(), Error> {
        let r = self
            .req(proto::NetworkRef {
                name: name.to_owned(),
            })
            .await?;
        self.node().remove_network(r).await?;
        Ok(())
    }

    /// Log lines (of one container, or all), then new ones while `follow`.
    pub async fn logs(
        &self,
        deployment: &str,
        container: &str,
        tail: u32,
        follow: bool,
    ) -> Result<Streaming<proto::LogLine>, Error> {
        let r = self
            .req(proto::GetLogsRequest {
                deployment: deployment.to_owned(),
                container: container.to_owned(),
                tail,
                follow,
            })
            .await?;
        Ok(self.node().get_logs(r).await?.into_inner())
    }

    /// Events kept so far, then new ones.
    pub async fn events(&self, deployment: &str) -> Result<Streaming<proto::Event>, Error> {
        let r = self
            .req(proto::GetEventsRequest {
                deployment: deployment.to_owned(),
            })
            .await?;
        Ok(self.node().get_events(r).await?.into_inner())
    }

    /// Starts `command` in `container`, with a terminal of `size` (rows, cols) when
    /// given.
    pub async fn exec(
        &self,
        deployment: &str,
        container: &str,
        command: Vec<String>,
        size: Option<(u32, u32)>,
    ) -> Result<ExecSession, Error> {
        let (tx, rx) = mpsc::channel(64);
        let start = proto::ExecStart {
            deployment: deployment.to_owned(),
            container: container.to_owned(),
            command,
            tty: size.is_some(),
            size: size.map(|(rows, cols)| proto::TerminalSize { rows, cols }),
        };
        tx.send(proto::ExecInput {
            input: Some(proto::exec_input::Input::Start(start)),
        })
        .await
        .map_err(|_| Error::Local("exec input closed".into()))?;
        let r = self
            .req(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?;
        let output = self.node().exec_in_container(r).await?.into_inner();
        Ok(ExecSession { input: tx, output })
    }

    fn inference(&self) -> InferenceServiceClient<Channel> {
        InferenceServiceClient::new(self.channel.clone())
    }

    /// Streams a generation: deltas, the last with its finish reason and usage.
    pub async fn generate(
        &self,
        r: proto::GenerateRequest,
    ) -> Result<Streaming<proto::GenerateChunk>, Error> {
        let r = self.req(r).await?;
        Ok(self.inference().generate(r).await?.into_inner())
    }

    /// Embeddings of `r`'s inputs, in order.
    pub async fn embed(&self, r: proto::EmbedRequest) -> Result<proto::EmbedResponse, Error> {
        let r = self.req(r).await?;
        Ok(self.inference().embed(r).await?.into_inner())
    }

    /// Documents scored against a query.
    pub async fn rerank(&self, r: proto::RerankRequest) -> Result<proto::RerankResponse, Error> {
        let r = self.req(r).await?;
        Ok(self.inference().rerank(r).await?.into_inner())
    }
}

/// `msg` with `authorization: Bearer <token>`.
pub fn bearer<T>(msg: T, token: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = format!("Bearer {token}").parse() {
        r.metadata_mut().insert("authorization", v);
    }
    r
}
