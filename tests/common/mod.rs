//! Shared helpers for the end-to-end tests: a real anvil with the contracts deployed,
//! nodes started in-process or as the real binary, and signing clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use alloy::{
    node_bindings::{Anvil, AnvilInstance},
    primitives::{Address, U256},
    providers::{DynProvider, Provider, ext::AnvilApi},
    signers::local::PrivateKeySigner,
};
pub mod bench;
pub mod cluster;
pub mod docker;
pub mod faults;
pub mod git;
pub mod inference;
pub mod netns;
pub mod rpc;

use hanzo_node::{
    chain::{self, Client, DeployParams, Deployment},
    config::Config,
    keys::{NODE_KEY_FILE, NodeKey},
    node::Node,
};

/// The value of command-line flag `name` (`--name N`), or `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One ether in wei.
pub fn ether(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

/// `n` thousandths of an ether in wei.
pub fn milli(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(15))
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The anvil binary installed by `scripts/setup`.
pub fn anvil_bin() -> PathBuf {
    let bin = repo_root().join("node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    assert!(
        bin.exists(),
        "anvil not found at {}: run scripts/setup",
        bin.display()
    );
    bin
}

/// The `hanzo-node` binary of this build (built on demand).
pub fn node_bin() -> PathBuf {
    // target/debug/deps/<test> or target/debug/<bench> → target/debug/hanzo-node
    let exe = std::env::current_exe().expect("test binary path");
    let mut dir = exe.parent().expect("target dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target dir");
    }
    let bin = dir.join("hanzo-node");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "hanzo-node", "--bin", "hanzo-node"])
            .current_dir(repo_root())
            .status()
            .expect("cargo build");
        assert!(status.success(), "building hanzo-node failed");
    }
    bin
}

/// Nodes of each devnet's local DHT.
const DHT_NODES: usize = 5;
/// DHT request timeout on loopback.
const DHT_TIMEOUT: Duration = Duration::from_millis(100);

/// `count` DHT nodes on loopback, each holding at most `values` mutable records,
/// each bootstrapped from the ones before it. (`mainline::Testnet` holds the
/// blocking handles, so their blocking calls are used here, as its own builder does.)
#[allow(deprecated)]
fn small_dht(count: usize, values: usize) -> mainline::Testnet {
    let mut nodes = Vec::new();
    let mut bootstrap: Vec<String> = Vec::new();
    for _ in 0..count {
        let mut builder = mainline::Dht::builder();
        builder
            .server_mode()
            .server_settings(mainline::ServerSettings {
                max_mutable_values: values,
                ..Default::default()
            })
            .bind_address(std::net::Ipv4Addr::LOCALHOST)
            .request_timeout(DHT_TIMEOUT);
        if bootstrap.is_empty() {
            builder.no_bootstrap();
        } else {
            builder.bootstrap(&bootstrap);
        }
        let node = builder.build().expect("DHT node on loopback");
        node.bootstrapped();
        bootstrap.push(node.info().local_addr().to_string());
        nodes.push(node);
    }
    mainline::Testnet { bootstrap, nodes }
}

/// A local chain with the contracts deployed (min operator stake 1 ETH, min caller
/// stake 0.1 ETH, unbonding 60 s), and a data dir holding a node key and the
/// deployment file.
pub struct Devnet {
    /// The anvil process.
    pub anvil: AnvilInstance,
    /// Where the contracts are.
    pub deployment: Deployment,
    /// Unsigned provider for anvil's own API.
    pub provider: DynProvider,
    /// A data dir with `node.key`, `deployment.json` and nothing else.
    pub dir: tempfile::TempDir,
    /// A Mainline DHT of its own on loopback, for the nodes' DNS packets.
    pub dht: mainline::Testnet,
    /// How often nodes keep other operators' packets alive (`dns.keep_interval`);
    /// the node default unless set.
    pub keep_interval: Option<Duration>,
}

impl Devnet {
    /// Starts anvil and deploys with dev account 0 as admin.
    pub async fn start() -> Self {
        let dht = tokio::task::spawn_blocking(|| mainline::Testnet::builder(DHT_NODES).build())
            .await
            .expect("dht task")
            .expect("local DHT on loopback");
        Self::start_on(dht).await
    }

    /// [`Devnet::start`] on a DHT whose nodes each hold at most `values` records: a
    /// record nobody puts again is pushed out by newer ones, which is how records
    /// expire on this DHT implementation (it has no clock-based expiry).
    pub async fn start_with_small_dht(values: usize) -> Self {
        let dht = tokio::task::spawn_blocking(move || small_dht(DHT_NODES, values))
            .await
            .expect("dht task");
        Self::start_on(dht).await
    }

    async fn start_on(dht: mainline::Testnet) -> Self {
        init_logs();
        let anvil = Anvil::new()
            .path(anvil_bin())
            .try_spawn()
            .expect("anvil starts");
        let admin = Self::dev_key_of(&anvil, 0);
        let provider = chain::connect(&anvil.endpoint(), Some(admin.clone()))
            .await
            .expect("connect");
        let params = DeployParams {
            min_operator_stake: ether(1),
            min_caller_stake: milli(100),
            unbonding_period: 60,
        };
        let deployment = chain::deploy(&provider, admin.address(), &params)
            .await
            .expect("deploy");
        let dir = tempfile::tempdir().expect("tempdir");
        NodeKey::generate()
            .save(&dir.path().join(NODE_KEY_FILE))
            .expect("node key");
        deployment
            .save(&dir.path().join("deployment.json"))
            .expect("deployment file");
        let provider = chain::connect(&anvil.endpoint(), None)
            .await
            .expect("connect");
        Self {
            anvil,
            deployment,
            provider,
            dir,
            dht,
            keep_interval: None,
        }
    }

    fn dev_key_of(anvil: &AnvilInstance, i: usize) -> PrivateKeySigner {
        PrivateKeySigner::from_signing_key(anvil.keys()[i].clone().into())
    }

    /// Anvil's dev account `i` as a signer.
    pub fn dev_key(&self, i: usize) -> PrivateKeySigner {
        Self::dev_key_of(&self.anvil, i)
    }

    /// Anvil's dev account `i` address.
    pub fn dev_address(&self, i: usize) -> Address {
        self.anvil.addresses()[i]
    }

    /// A client signing as dev account `i`.
    pub async fn client(&self, i: usize) -> Client {
        let provider = chain::connect(&self.anvil.endpoint(), Some(self.dev_key(i)))
            .await
            .expect("connect");
        // anvil mines at once; alloy's default 250 ms receipt polling would dominate.
        provider
            .client()
            .set_poll_interval(Duration::from_millis(10));
        Client::new(provider, self.deployment.clone())
    }

    /// Dev account `i` deposits 0.5 ETH of caller stake (the minimum is 0.1).
    pub async fn stake_caller(&self, i: usize) {
        self.client(i)
            .await
            .deposit_caller(milli(500))
            .await
            .expect("caller deposit");
    }

    /// The node key in the data dir.
    pub fn node_key(&self) -> NodeKey {
        NodeKey::load(&self.dir.path().join(NODE_KEY_FILE)).expect("node key")
    }

    /// A node config for the data dir: 2 confirmations, fast polling, any free port.
    pub fn config(&self) -> Config {
        let mut config = Config {
            data_dir: self.dir.path().to_path_buf(),
            ..Config::default()
        };
        config.chain.rpc_url = self.anvil.endpoint();
        config.chain.confirmations = 2;
        config.chain.poll_interval = Duration::from_millis(50);
        config.http.listen = "127.0.0.1:0".parse().expect("addr");
        config.p2p.listen = vec!["/ip4/127.0.0.1/tcp/0".into()];
        config.p2p.sync_interval = Duration::from_secs(1);
        // A push asking for a quorum of replicas that are away is refused sooner.
        config.git.quorum_timeout = Duration::from_secs(5);
        config.rpc.listen = "127.0.0.1:0".parse().expect("addr");
        config.dns.bootstrap = self.dht.bootstrap.clone();
        config.dns.bind = Some(std::net::Ipv4Addr::LOCALHOST);
        config.dns.request_timeout = DHT_TIMEOUT;
        config.dns.server.enabled = true;
        config.dns.server.listen = "127.0.0.1:0".parse().expect("addr");
        if let Some(every) = self.keep_interval {
            config.dns.keep_interval = every;
        }
        config
    }

    /// The environment that points a `hanzo-node` process at this devnet's DHT and
    /// gives it a gRPC port of its own.
    pub fn node_env(&self) -> [(&'static str, String); 3] {
        [
            ("HANZO_RPC_LISTEN", "127.0.0.1:0".into()),
            ("HANZO_DNS_BOOTSTRAP", self.dht.bootstrap.join(",")),
            (
                "HANZO_DNS_REQUEST_TIMEOUT",
                format!("{}ms", DHT_TIMEOUT.as_millis()),
            ),
        ]
    }

    /// A DHT client on this devnet's DHT, as a separate resolver would have.
    pub fn dht_client(&self) -> pkarr::Client {
        hanzo_node::dns::client(&self.config().dns).expect("DHT client")
    }

    /// Starts a node in-process.
    pub async fn node(&self) -> Node {
        Node::start(self.config()).await.expect("node starts")
    }

    /// The current block number.
    pub async fn head(&self) -> u64 {
        self.provider
            .get_block_number()
            .await
            .expect("block number")
    }

    /// Mines `n` empty blocks.
    pub async fn mine(&self, n: u64) {
        self.provider
            .anvil_mine(Some(n), None)
            .await
            .expect("anvil_mine");
    }

    /// Mines enough blocks for everything so far to be confirmed, and returns the
    /// block that then holds it all.
    pub async fn confirm(&self) -> u64 {
        let head = self.head().await;
        self.mine(2).await;
        head
    }

    /// Runs the `hanzo-node` binary against this devnet's data dir.
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(node_bin());
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HANZO_DATA_DIR", self.dir.path())
            .env("HANZO_CHAIN_RPC_URL", self.anvil.endpoint())
            .env("HANZO_LOG", "warn")
            .env("HANZO_P2P_LISTEN", "/ip4/127.0.0.1/tcp/0")
            .envs(self.node_env());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run hanzo-node")
    }
}

/// Sends the nodes' logs to the test output, filtered by `HANZO_LOG` (default `warn`).
pub fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("HANZO_LOG").unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// Stdout of a successful run, or a panic showing stderr.
pub fn ok(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "command failed\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Stderr of a failed run, or a panic if it succeeded.
pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "command succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits, at most `limit`, until `probe` returns `Some`.
pub async fn eventually<T>(limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let start = std::time::Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The response (head and body) to a plain `GET path` on `addr`; empty if the
/// connection fails. HTTP/1.0, so the tests need no HTTP client crate.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out
}
