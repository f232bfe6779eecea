//! Configuration: defaults, then `<data dir>/config.toml` (or `--config`), then
//! `HANZO_*` environment variables, then command-line flags. Validated once at start;
//! `hanzo-node config --dump` prints the result.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Name of the config file inside the data dir.
pub const CONFIG_FILE: &str = "config.toml";

/// What is wrong with the configuration.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("invalid setting {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: String,
    },
}

/// The node's configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the node keeps its keys, database and repos. Default: `~/.hanzo-node`.
    pub data_dir: PathBuf,
    /// On SIGTERM or Ctrl-C, how long pushes, calls and other work in flight get to
    /// finish before the node exits anyway. Default: `30s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A file whose first line is the operator keystore's password (a systemd
    /// credential, say), read by the commands that sign; `HANZO_PASSWORD` wins over
    /// it. Default: none (prompt on a terminal).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Chain access.
    pub chain: ChainConfig,
    /// The HTTP listener (git smart HTTP, health, readiness, metrics).
    pub http: HttpConfig,
    /// Git hosting limits and windows.
    pub git: GitConfig,
    /// Peer-to-peer replication.
    pub p2p: P2pConfig,
    /// Endpoint records on the Mainline DHT (pkarr).
    pub dns: DnsConfig,
    /// gRPC for staked callers.
    pub rpc: RpcConfig,
    /// Workloads callers deploy.
    pub deploy: DeployConfig,
    /// Models served to callers.
    pub inference: InferenceConfig,
    /// Logging.
    pub log: LogConfig,
}

/// Chain access and sync.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainConfig {
    /// JSON-RPC endpoint; `ws://` or `wss://` also subscribes to new heads.
    /// Default: `http://127.0.0.1:8545`.
    pub rpc_url: String,
    /// Deployment file (chain id, contract addresses, deployment block), relative to
    /// the data dir. Default: `deployment.json`.
    pub deployment: PathBuf,
    /// Blocks a log must be buried under before the ACL applies it. Default: 2.
    pub confirmations: u64,
    /// How often to poll for new blocks when not subscribed. Default: `1s`.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most blocks asked for in one `eth_getLogs`; halved when the endpoint refuses.
    /// Default: 10000.
    pub max_block_range: u64,
    /// ACL checkpoints kept for rolling back a reorg deeper than `confirmations`.
    /// Default: 64.
    pub checkpoints_kept: usize,
}

/// The HTTP listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/health`, `/readiness`, `/liveness` and `/metrics`.
    /// Default: `127.0.0.1:8680`.
    pub listen: SocketAddr,
}

/// Git hosting: limits on what one request may carry, and how long signed things last.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitConfig {
    /// Largest pack one push may send, in bytes. Default: 4 GiB.
    pub max_pack_bytes: u64,
    /// Most objects one pushed pack may hold. Default: 10,000,000.
    pub max_objects: u32,
    /// Most ref updates in one push. Default: 1000.
    pub max_ref_updates: usize,
    /// Largest request besides the pack (push commands and certificate, fetch
    /// negotiation), in bytes. Default: 16 MiB.
    pub max_request_bytes: usize,
    /// A client that sends nothing of its request, or reads nothing of a fetch
    /// response, for this long is dropped. Default: `60s`.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a push-certificate nonce stays valid. Default: `5m`.
    #[serde(with = "humantime_serde")]
    pub nonce_window: Duration,
    /// Longest lifetime accepted for a private-repo read token. Default: `1h`.
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    /// How long an update that a ref rule asks several signatures for waits for the
    /// rest after its first signature; then it is dropped. Default: `7d`.
    #[serde(with = "humantime_serde")]
    pub pending_expiry: Duration,
    /// Pushes to these repos (by name) wait for this many other replicas to hold
    /// them before their pusher is told `ok`, unless the push asks otherwise (`git
    /// push -o hanzo.quorum=<n|all>`). Default: none.
    pub quorum: std::collections::BTreeMap<String, usize>,
    /// How long a push waits for its quorum; then it is refused and nothing moves.
    /// Default: `30s`.
    #[serde(with = "humantime_serde")]
    pub quorum_timeout: Duration,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            max_pack_bytes: 4 << 30,
            max_objects: 10_000_000,
            max_ref_updates: 1000,
            max_request_bytes: 16 << 20,
            idle_timeout: Duration::from_secs(60),
            nonce_window: Duration::from_secs(300),
            max_token_lifetime: Duration::from_secs(3600),
            pending_expiry: Duration::from_secs(7 * 24 * 3600),
            quorum: std::collections::BTreeMap::new(),
            quorum_timeout: Duration::from_secs(30),
        }
    }
}

/// Peer-to-peer replication among staked operators' nodes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct P2pConfig {
    /// Whether the node joins the mesh at all. Default: true.
    pub enabled: bool,
    /// Multiaddrs to listen on. Default: TCP and QUIC on port 8681 of every interface.
    pub listen: Vec<String>,
    /// Peers to dial at start besides the operator endpoints on chain, as multiaddrs
    /// (a `/p2p/<peer id>` suffix is optional).
    pub bootstrap: Vec<String>,
    /// Which repos this node replicates and serves: `"all"`, `"preferred"` (those
    /// whose RepoToken names this node as a replicator, or names no active one), or
    /// a list of repo names. Default: `"all"`.
    pub replicate: Replicate,
    /// How often peers compare their refs (and on every new connection).
    /// Default: `30s`.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// Largest gossip message, in bytes. Default: 256 KiB.
    pub max_message_bytes: usize,
    /// Gossip messages accepted per peer per second; beyond it they are ignored.
    /// Default: 50.
    pub max_messages_per_sec: u32,
    /// Pack transfers served to one peer at once. Default: 2.
    pub max_transfers_per_peer: usize,
    /// Bytes per second served to one peer. Default: 256 MiB.
    pub max_bytes_per_sec: u64,
    /// Most connections, in and out. Default: 256.
    pub max_connections: u32,
    /// Deadline of every stream read and write in pack transfer and catch-up: a peer
    /// that sends nothing for this long is dropped and the objects are fetched from
    /// another. Default: `20s`.
    #[serde(with = "humantime_serde")]
    pub stream_timeout: Duration,
    /// Longest one fetch from one peer may take, whatever it sends; then the fetch is
    /// abandoned, the peer penalized, and another peer asked. Default: `10m`.
    #[serde(with = "humantime_serde")]
    pub fetch_deadline: Duration,
}

/// The node's signed DNS records on the Mainline DHT, and how it resolves others'.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Whether the node publishes its endpoints. Default: true.
    pub enabled: bool,
    /// DHT nodes to bootstrap from, as `host:port`; empty means Mainline's public
    /// bootstrap nodes. A devnet or test lists its local DHT here.
    pub bootstrap: Vec<String>,
    /// IPv4 address the DHT socket binds to. Default: every interface.
    pub bind: Option<std::net::Ipv4Addr>,
    /// UDP port of the DHT socket. Default: any free port.
    pub port: Option<u16>,
    /// How long one DHT request may take. Default: `2s` (tests on loopback: ~100 ms).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Whether this node's DHT socket answers other DHT nodes' requests from the
    /// start (otherwise Mainline's adaptive mode decides). Default: false.
    pub server_mode: bool,
    /// The git smart-HTTP base URL others should use, e.g. `https://git.example.org`.
    /// Default: `http://<http.listen>` (the loopback address when it listens on every
    /// interface, with a warning).
    pub git_url: Option<String>,
    /// The gRPC URL others should use. Default: none published.
    pub grpc_url: Option<String>,
    /// How often the packet is published again. Default: `1h`.
    #[serde(with = "humantime_serde")]
    pub republish_interval: Duration,
    /// Base URLs of nodes (their HTTP listener, e.g. `https://node.example.org`)
    /// whose pkarr relay (`/pkarr/<key>`) `hanzo-node resolve` asks when the DHT
    /// has no packet. Default: none.
    pub relays: Vec<String>,
    /// How often the other active operators' packets are looked up, kept and put on
    /// the DHT again, so they stay resolvable while their nodes are down. Default: `1h`.
    #[serde(with = "humantime_serde")]
    pub keep_interval: Duration,
    /// The DNS server answering for pkarr names (`[dns.server]`).
    pub server: DnsServerConfig,
}

/// The DNS server: plain DNS over UDP and TCP, and DNS-over-HTTPS on the HTTP
/// listener, for names under the pkarr zone.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsServerConfig {
    /// Whether the node answers DNS. Default: false (the devnet turns it on).
    pub enabled: bool,
    /// UDP and TCP address. Default: `127.0.0.1:8653` (port 53 needs root or
    /// `CAP_NET_BIND_SERVICE`).
    pub listen: SocketAddr,
    /// The zone under which names are `<z-base-32 key>.<origin>`. Default: `""`
    /// (the key is the top-level label, as pkarr names are).
    pub origin: String,
    /// Whether keys that are no active operator's node key resolve too. Default: false.
    pub any_key: bool,
    /// Queries per second one client address may send (UDP, TCP and
    /// DNS-over-HTTPS together); more are dropped. Default: 200.
    pub rate_limit: u32,
}

impl Default for DnsServerConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8653)),
            origin: String::new(),
            any_key: false,
            rate_limit: 200,
        }
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bootstrap: Vec::new(),
            bind: None,
            port: None,
            request_timeout: Duration::from_secs(2),
            server_mode: false,
            git_url: None,
            grpc_url: None,
            republish_interval: Duration::from_secs(3600),
            keep_interval: Duration::from_secs(3600),
            relays: Vec::new(),
            server: DnsServerConfig::default(),
        }
    }
}

/// The gRPC listener and how callers sign in.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RpcConfig {
    /// Whether the node serves gRPC. Default: true.
    pub enabled: bool,
    /// Listen address. Default: `0.0.0.0:8690`.
    pub listen: SocketAddr,
    /// The domain sign-in messages name (EIP-4361 `domain`) when callers sign in
    /// to the node directly, e.g. `node.example.org:8690`. Default: the listen
    /// address.
    pub domain: Option<String>,
    /// Web origins (`https://app.example`, `http://localhost:5173`) whose pages may
    /// call the node from a browser (CORS on gRPC-Web and the HTTP API) and whose
    /// domains sign-in messages may name; `"*"` allows any (for development). The
    /// node's own dashboard origin is always allowed. Default: none besides it.
    pub origins: Vec<String>,
    /// How long a session token lives. Default: `15m`.
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Longest a session can be refreshed for since sign-in. Default: `24h`.
    #[serde(with = "humantime_serde")]
    pub max_session: Duration,
    /// How long a sign-in nonce may wait to be used. Default: `5m`.
    #[serde(with = "humantime_serde")]
    pub nonce_ttl: Duration,
    /// Requests per second a caller with the minimum stake may make; it grows in
    /// proportion to stake, up to `max_rate`. Default: 20.
    pub base_rate: f64,
    /// Most requests per second for any caller (and for operators). Default: 1000.
    pub max_rate: f64,
    /// Largest request message in bytes. Default: 4 MiB.
    pub max_message_bytes: usize,
    /// PEM certificate chain and key: serve TLS instead of plain HTTP/2.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mTLS).
    pub tls_client_ca: Option<PathBuf>,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8690)),
            domain: None,
            origins: Vec::new(),
            session_ttl: Duration::from_secs(15 * 60),
            max_session: Duration::from_secs(24 * 3600),
            nonce_ttl: Duration::from_secs(300),
            base_rate: 20.0,
            max_rate: 1000.0,
            max_message_bytes: 4 << 20,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}

/// Which repos a node replicates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Replicate {
    /// `"all"` or `"preferred"`.
    Mode(ReplicateMode),
    /// These repos, by name.
    List(Vec<String>),
}

/// A replication mode by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicateMode {
    /// Every repo on chain.
    All,
    /// Repos whose preferred replicators include this node (or name no active one).
    Preferred,
}

impl Default for P2pConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec![
                "/ip4/0.0.0.0/tcp/8681".into(),
                "/ip4/0.0.0.0/udp/8681/quic-v1".into(),
            ],
            bootstrap: Vec::new(),
            replicate: Replicate::Mode(ReplicateMode::All),
            sync_interval: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(20),
            fetch_deadline: Duration::from_secs(600),
            max_message_bytes: 256 << 10,
            max_messages_per_sec: 50,
            max_transfers_per_peer: 2,
            max_bytes_per_sec: 256 << 20,
            max_connections: 256,
        }
    }
}

/// Workloads staked callers deploy through gRPC.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeployConfig {
    /// Whether callers may deploy. Default: true.
    pub enabled: bool,
    /// `process` (supervised local processes) or `docker` (containers on the local
    /// Docker Engine; `DOCKER_HOST` or `/var/run/docker.sock`). Default: `process`.
    pub runtime: DeployRuntime,
    /// Working directories of deployments. Default: `<data_dir>/deploy`.
    pub dir: Option<PathBuf>,
    /// Log bytes kept per deployment (oldest lines go first). Default: 1 MiB.
    pub log_bytes: usize,
    /// Replicas this node runs over all callers. Default: 64.
    pub max_replicas: u32,
    /// Replicas one caller may run here. Default: 16.
    pub max_replicas_per_caller: u32,
    /// How long a replica has to exit after SIGTERM before SIGKILL. Default: `10s`.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Idle time after which a log or event stream sends a keep-alive. Default: `15s`.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// The Docker Engine the `docker` runtime uses (`unix:///…/docker.sock`, `tcp://…`).
    /// Default: `DOCKER_HOST`, else `unix:///var/run/docker.sock`.
    pub docker_host: Option<String>,
    /// The host address the docker runtime publishes ports on when a spec names
    /// none. Default: `0.0.0.0` (every interface).
    pub publish_address: String,
    /// Whether callers may publish host ports below 1024. Default: false.
    pub allow_low_ports: bool,
    /// Runs process-runtime workloads WITHOUT a sandbox: as the node's own user, with
    /// the host's whole filesystem (node key and keystore included) in reach. Only for
    /// a node whose callers are all trusted. Default: false.
    pub insecure_no_sandbox: bool,
    /// Whether sandboxed workloads share the host's network (`host`: they can listen
    /// on the host's ports and reach whatever the host reaches, the node's own
    /// loopback listeners included) or have only a loopback of their own (`none`).
    /// Default: `none`.
    pub network: WorkloadNetwork,
    /// The host uid (and gid) sandboxed workloads run as when the node runs as root.
    /// Default: 65534 (`nobody`).
    pub sandbox_uid: u32,
    /// Memory of a replica whose spec sets none, in bytes. Default: 1 GiB.
    pub replica_memory_bytes: u64,
    /// Named volumes one caller may own here. Default: 16.
    pub max_volumes_per_caller: u32,
    /// Shared networks one caller may own here (docker runtime). Default: 8.
    pub max_networks_per_caller: u32,
    /// Processes and threads one replica may have. Default: 256.
    pub replica_pids: u32,
    /// Open files per process of a replica. Default: 1024.
    pub replica_open_files: u32,
}

/// The network of sandboxed workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadNetwork {
    /// A loopback of their own, nothing else.
    None,
    /// The host's.
    Host,
}

/// The runtime that runs replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeployRuntime {
    /// Supervised local processes.
    Process,
    /// Containers on the local Docker Engine.
    Docker,
}

impl Default for DeployConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            runtime: DeployRuntime::Process,
            dir: None,
            log_bytes: 1 << 20,
            max_replicas: 64,
            max_replicas_per_caller: 16,
            stop_grace: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            docker_host: None,
            publish_address: "0.0.0.0".into(),
            allow_low_ports: false,
            insecure_no_sandbox: false,
            network: WorkloadNetwork::None,
            sandbox_uid: 65534,
            replica_memory_bytes: 1 << 30,
            max_volumes_per_caller: 16,
            max_networks_per_caller: 8,
            replica_pids: 256,
            replica_open_files: 1024,
        }
    }
}

/// Inference served to staked callers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// Inference calls one caller may have in flight at once. Default: 4.
    pub max_concurrent_per_caller: usize,
    /// The models, each with its backend. Default: none.
    pub models: Vec<ModelConfig>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        Self {
            max_concurrent_per_caller: 4,
            models: Vec::new(),
        }
    }
}

/// One model (`[[inference.models]]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// What callers ask for.
    pub name: String,
    /// `openai` (an OpenAI-compatible upstream) or `local` (the built-in CPU encoder).
    pub backend: ModelBackend,
    /// openai: the upstream's base URL, ending in `/v1`.
    #[serde(default)]
    pub url: Option<String>,
    /// openai: the model name upstream. Default: `name`.
    #[serde(default)]
    pub upstream_model: Option<String>,
    /// openai: environment variable holding the upstream's API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// openai: longest wait for the upstream's answer, and for each next piece of it;
    /// local: longest a call may compute (then its work stops). Default: `120s`.
    #[serde(default = "default_model_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// openai: retries when the connection is refused (nothing else is retried).
    /// Default: 2.
    #[serde(default = "default_connect_retries")]
    pub connect_retries: u32,
    /// local: the model directory (`config.json`, `model.safetensors`, and
    /// `tokenizer.json` or `vocab.txt`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// local: worker threads computing this model. Default: the machine's cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// local: most input tokens one call may carry. Default: 65536.
    #[serde(default = "default_max_input_tokens")]
    pub max_input_tokens: usize,
}

fn default_max_input_tokens() -> usize {
    65536
}

impl ModelConfig {
    /// A model named `name` on `backend`, everything else at its default.
    pub fn new(name: &str, backend: ModelBackend) -> Self {
        Self {
            name: name.into(),
            backend,
            url: None,
            upstream_model: None,
            api_key_env: None,
            timeout: default_model_timeout(),
            connect_retries: default_connect_retries(),
            path: None,
            threads: None,
            max_input_tokens: default_max_input_tokens(),
        }
    }
}

fn default_model_timeout() -> Duration {
    Duration::from_secs(120)
}

fn default_connect_retries() -> u32 {
    2
}

/// Which backend serves a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelBackend {
    /// An OpenAI-compatible upstream.
    Openai,
    /// The built-in CPU encoder (embed, rerank).
    Local,
}

/// Logging.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info,hanzo::chain=debug`. Default: `info`.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: default_data_dir(),
            shutdown_grace: Duration::from_secs(30),
            password_file: None,
            chain: ChainConfig::default(),
            http: HttpConfig::default(),
            git: GitConfig::default(),
            p2p: P2pConfig::default(),
            dns: DnsConfig::default(),
            rpc: RpcConfig::default(),
            deploy: DeployConfig::default(),
            inference: InferenceConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Default for ChainConfig {
    fn default() -> Self {
        Self {
            rpc_url: "http://127.0.0.1:8545".into(),
            deployment: "deployment.json".into(),
            confirmations: 2,
            poll_interval: Duration::from_secs(1),
            max_block_range: 10_000,
            checkpoints_kept: 64,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8680)),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
        }
    }
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".hanzo-node")
}

/// Settings from the environment and the command line; `None` leaves the file's value.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct Overrides {
    /// Data directory [default: ~/.hanzo-node].
    #[arg(long, env = "HANZO_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Config file [default: <data dir>/config.toml].
    #[arg(long, env = "HANZO_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// File holding the operator keystore's password (first line).
    #[arg(long, env = "HANZO_PASSWORD_FILE", global = true)]
    pub password_file: Option<PathBuf>,
    /// Chain JSON-RPC URL.
    #[arg(long = "chain.rpc-url", env = "HANZO_CHAIN_RPC_URL", global = true)]
    pub rpc_url: Option<String>,
    /// Deployment file.
    #[arg(
        long = "chain.deployment",
        env = "HANZO_CHAIN_DEPLOYMENT",
        global = true
    )]
    pub deployment: Option<PathBuf>,
    /// Confirmations before a log is applied.
    #[arg(
        long = "chain.confirmations",
        env = "HANZO_CHAIN_CONFIRMATIONS",
        global = true
    )]
    pub confirmations: Option<u64>,
    /// Poll interval, e.g. `500ms`.
    #[arg(long = "chain.poll-interval", env = "HANZO_CHAIN_POLL_INTERVAL", global = true, value_parser = humantime::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// HTTP listen address.
    #[arg(long = "http.listen", env = "HANZO_HTTP_LISTEN", global = true)]
    pub http_listen: Option<SocketAddr>,
    /// p2p listen multiaddrs, comma-separated.
    #[arg(
        long = "p2p.listen",
        env = "HANZO_P2P_LISTEN",
        global = true,
        value_delimiter = ','
    )]
    pub p2p_listen: Option<Vec<String>>,
    /// p2p bootstrap multiaddrs, comma-separated.
    #[arg(
        long = "p2p.bootstrap",
        env = "HANZO_P2P_BOOTSTRAP",
        global = true,
        value_delimiter = ','
    )]
    pub p2p_bootstrap: Option<Vec<String>>,
    /// DHT bootstrap nodes (`host:port`), comma-separated.
    #[arg(
        long = "dns.bootstrap",
        env = "HANZO_DNS_BOOTSTRAP",
        global = true,
        value_delimiter = ','
    )]
    pub dns_bootstrap: Option<Vec<String>>,
    /// pkarr relays (nodes' HTTP base URLs) to ask when the DHT has no packet,
    /// comma-separated.
    #[arg(
        long = "dns.relays",
        env = "HANZO_DNS_RELAYS",
        global = true,
        value_delimiter = ','
    )]
    pub dns_relays: Option<Vec<String>>,
    /// DHT request timeout, e.g. `100ms`.
    #[arg(long = "dns.request-timeout", env = "HANZO_DNS_REQUEST_TIMEOUT", global = true, value_parser = humantime::parse_duration)]
    pub dns_request_timeout: Option<Duration>,
    /// gRPC listen address.
    #[arg(long = "rpc.listen", env = "HANZO_RPC_LISTEN", global = true)]
    pub rpc_listen: Option<SocketAddr>,
    /// How often peers compare refs, e.g. `5s`.
    #[arg(long = "p2p.sync-interval", env = "HANZO_P2P_SYNC_INTERVAL", global = true, value_parser = humantime::parse_duration)]
    pub p2p_sync_interval: Option<Duration>,
    /// Log filter.
    #[arg(long = "log", env = "HANZO_LOG", global = true)]
    pub log: Option<String>,
}

impl Config {
    /// Loads the configuration the way the binary does.
    pub fn load(overrides: &Overrides) -> Result<Self, Error> {
        let data_dir = overrides.data_dir.clone().unwrap_or_else(default_data_dir);
        let file = overrides
            .config
            .clone()
            .unwrap_or_else(|| data_dir.join(CONFIG_FILE));
        let mut config = if file.exists() || overrides.config.is_some() {
            let text = std::fs::read_to_string(&file).map_err(|source| Error::Read {
                path: file.display().to_string(),
                source,
            })?;
            Self::parse(&text, &file)?
        } else {
            Self::default()
        };
        let o = overrides.clone();
        if let Some(v) = o.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = o.password_file {
            config.password_file = Some(v);
        }
        if let Some(v) = o.rpc_url {
            config.chain.rpc_url = v;
        }
        if let Some(v) = o.deployment {
            config.chain.deployment = v;
        }
        if let Some(v) = o.confirmations {
            config.chain.confirmations = v;
        }
        if let Some(v) = o.poll_interval {
            config.chain.poll_interval = v;
        }
        if let Some(v) = o.http_listen {
            config.http.listen = v;
        }
        if let Some(v) = o.p2p_listen {
            config.p2p.listen = v;
        }
        if let Some(v) = o.p2p_bootstrap {
            config.p2p.bootstrap = v;
        }
        if let Some(v) = o.p2p_sync_interval {
            config.p2p.sync_interval = v;
        }
        if let Some(v) = o.rpc_listen {
            config.rpc.listen = v;
        }
        if let Some(v) = o.dns_bootstrap {
            config.dns.bootstrap = v;
        }
        if let Some(v) = o.dns_request_timeout {
            config.dns.request_timeout = v;
        }
        if let Some(v) = o.dns_relays {
            config.dns.relays = v;
        }
        if let Some(v) = o.log {
            config.log.filter = v;
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML config file's text.
    pub fn parse(text: &str, path: &Path) -> Result<Self, Error> {
        toml::from_str(text).map_err(|source| Error::Parse {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    fn validate(&self) -> Result<(), Error> {
        let url = &self.chain.rpc_url;
        if !["http://", "https://", "ws://", "wss://"]
            .iter()
            .any(|p| url.starts_with(p))
        {
            return Err(Error::Invalid {
                setting: "chain.rpc_url",
                reason: format!("{url:?} is not an http(s):// or ws(s):// URL"),
            });
        }
        if self.chain.max_block_range == 0 {
            return Err(Error::Invalid {
                setting: "chain.max_block_range",
                reason: "must be at least 1".into(),
            });
        }
        if self.chain.poll_interval.is_zero() {
            return Err(Error::Invalid {
                setting: "chain.poll_interval",
                reason: "must be above zero".into(),
            });
        }
        if self.git.idle_timeout.is_zero() || self.git.nonce_window.is_zero() {
            return Err(Error::Invalid {
                setting: "git.idle_timeout / git.nonce_window",
                reason: "must be above zero".into(),
            });
        }
        if self.rpc.session_ttl.is_zero()
            || self.rpc.nonce_ttl.is_zero()
            || self.rpc.base_rate <= 0.0
            || self.rpc.max_rate < self.rpc.base_rate
        {
            return Err(Error::Invalid {
                setting: "rpc.session_ttl / rpc.nonce_ttl / rpc.base_rate / rpc.max_rate",
                reason: "must be above zero, with max_rate at least base_rate".into(),
            });
        }
        if self.rpc.tls_cert.is_some() != self.rpc.tls_key.is_some() {
            return Err(Error::Invalid {
                setting: "rpc.tls_cert / rpc.tls_key",
                reason: "set both or neither".into(),
            });
        }
        if self.dns.request_timeout.is_zero()
            || self.dns.republish_interval.is_zero()
            || self.dns.keep_interval.is_zero()
        {
            return Err(Error::Invalid {
                setting: "dns.request_timeout / dns.republish_interval / dns.keep_interval",
                reason: "must be above zero".into(),
            });
        }
        if self.p2p.sync_interval.is_zero()
            || self.p2p.stream_timeout.is_zero()
            || self.p2p.fetch_deadline.is_zero()
            || self.p2p.max_messages_per_sec == 0
            || self.p2p.max_transfers_per_peer == 0
            || self.p2p.max_bytes_per_sec == 0
        {
            return Err(Error::Invalid {
                setting: "p2p",
                reason: "sync_interval, stream_timeout, fetch_deadline and the per-peer limits must be above zero".into(),
            });
        }
        Ok(())
    }

    /// The deployment file's path.
    pub fn deployment_path(&self) -> PathBuf {
        self.data_dir.join(&self.chain.deployment)
    }

    /// The database's path.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("db")
    }

    /// Where the bare repositories live.
    pub fn repos_path(&self) -> PathBuf {
        self.data_dir.join("repos")
    }

    /// Where deployments run.
    pub fn deploy_path(&self) -> PathBuf {
        self.deploy
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("deploy"))
    }

    /// The effective configuration as TOML.
    pub fn dump(&self) -> String {
        // Every field is a plain value TOML can hold, so this cannot fail.
        #[allow(clippy::expect_used)]
        toml::to_string_pretty(self).expect("config serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "[chain]\nrpc_url = \"ws://10.0.0.1:8546\"\nconfirmations = 5\npoll_interval = \"250ms\"\n",
        )
        .unwrap();
        let overrides = Overrides {
            data_dir: Some(dir.path().into()),
            confirmations: Some(7),
            ..Default::default()
        };
        let c = Config::load(&overrides).unwrap();
        assert_eq!(c.chain.rpc_url, "ws://10.0.0.1:8546");
        assert_eq!(c.chain.confirmations, 7, "flag beats file");
        assert_eq!(c.chain.poll_interval, Duration::from_millis(250));
        assert_eq!(c.data_dir, dir.path());
        // The dump parses back to the same settings.
        let again = Config::parse(&c.dump(), Path::new("dump")).unwrap();
        assert_eq!(again.chain.confirmations, 7);
        assert_eq!(again.p2p.replicate, Replicate::Mode(ReplicateMode::All));
        let list = Config::parse("[p2p]\nreplicate = [\"demo\"]\n", Path::new("c")).unwrap();
        assert_eq!(list.p2p.replicate, Replicate::List(vec!["demo".into()]));
        let mode = Config::parse("[p2p]\nreplicate = \"preferred\"\n", Path::new("c")).unwrap();
        assert_eq!(
            mode.p2p.replicate,
            Replicate::Mode(ReplicateMode::Preferred)
        );
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        let err = Config::parse("[chain]\nrpc_ur = \"x\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("rpc_ur"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            data_dir: Some(dir.path().into()),
            rpc_url: Some("localhost:8545".into()),
            ..Default::default()
        };
        let err = Config::load(&overrides).unwrap_err();
        assert!(err.to_string().contains("chain.rpc_url"), "{err}");
    }
}
