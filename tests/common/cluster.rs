//! Several real nodes on one devnet, each with its own data dir and node key,
//! registered as operators with their loopback p2p addresses.

use std::{net::SocketAddr, path::Path, process::Command, time::Duration};

use alloy::primitives::B256;
use hanzo_node::{
    config::Config,
    keys::{NODE_KEY_FILE, NodeKey},
    node::Node,
};

use crate::{
    Devnet,
    bench::{Killed, free_addr},
    ether, eventually,
};

/// One node of a cluster: its data dir, and the node while it runs.
pub struct Member {
    /// The data dir (node key, deployment, db, repos).
    pub dir: tempfile::TempDir,
    /// The running node, if started.
    pub node: Option<Node>,
}

impl Member {
    /// The running node.
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("node running")
    }

    /// The smart-HTTP URL of repo `name` on this node.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.node().http_addr)
    }

    /// The node's libp2p listen addresses (with `/p2p/<peer id>`).
    pub async fn p2p_addrs(&self) -> Vec<String> {
        let p2p = self.node().p2p.as_ref().expect("p2p on");
        p2p.listen_addrs()
            .await
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// The node key.
    pub fn key(&self) -> NodeKey {
        NodeKey::load(&self.dir.path().join(NODE_KEY_FILE)).expect("node key")
    }

    /// The bare repo of token `id`.
    pub fn repo_dir(&self, id: u64) -> std::path::PathBuf {
        self.dir.path().join("repos").join(format!("{id}.git"))
    }

    /// Stops the node (its data dir stays).
    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    /// Starts the node again from its data dir.
    pub async fn restart(&mut self, net: &Devnet) {
        self.node = Some(
            Node::start(net.config_in(self.dir.path()))
                .await
                .expect("node restarts"),
        );
    }

    /// A `/metrics` sample's value (summed over labels that contain `labels`).
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        metric(self.node().http_addr, name, labels).await
    }
}

/// The sum of metric `name`'s samples whose labels contain `labels`, from the
/// `/metrics` of the node whose HTTP listener is `http`.
pub async fn metric(http: SocketAddr, name: &str, labels: &str) -> f64 {
    let text = crate::http_get(http, "/metrics").await;
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

impl Devnet {
    /// A data dir for one more node: its own node key and the deployment file.
    pub fn node_dir(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        NodeKey::generate()
            .save(&dir.path().join(NODE_KEY_FILE))
            .expect("node key");
        std::fs::copy(
            self.dir.path().join("deployment.json"),
            dir.path().join("deployment.json"),
        )
        .expect("deployment file");
        dir
    }

    /// The test config ([`Devnet::config`]) for data dir `dir`.
    pub fn config_in(&self, dir: &Path) -> Config {
        Config {
            data_dir: dir.to_path_buf(),
            ..self.config()
        }
    }

    /// Dev account `account` registers the node whose data dir is `dir` as its
    /// operator, with 2 ETH and the node's HTTP and p2p addresses as endpoint.
    pub async fn register_node(&self, account: usize, dir: &Path, node: &Node) {
        let mut endpoint = format!("http://{}", node.http_addr);
        if let Some(p2p) = &node.p2p {
            for addr in p2p.listen_addrs().await {
                endpoint.push(' ');
                endpoint.push_str(&addr.to_string());
            }
        }
        self.register_endpoint(account, dir, &endpoint).await;
    }

    /// Dev account `account` registers the node key in data dir `dir` as its
    /// operator, with 2 ETH and `endpoint`.
    pub async fn register_endpoint(&self, account: usize, dir: &Path, endpoint: &str) {
        let key = NodeKey::load(&dir.join(NODE_KEY_FILE)).expect("node key");
        self.client(account)
            .await
            .register_operator(B256::from(key.public().0), endpoint, ether(2))
            .await
            .expect("register operator");
    }

    /// Starts `n` nodes, registered as operators by dev accounts `first..first + n`,
    /// and waits until each is connected to all the others.
    pub async fn cluster(&self, n: usize, first: usize) -> Vec<Member> {
        self.cluster_on(n, first, "/ip4/127.0.0.1/tcp/0").await
    }

    /// [`Devnet::cluster`] with libp2p listening on `listen` (a multiaddr).
    pub async fn cluster_on(&self, n: usize, first: usize, listen: &str) -> Vec<Member> {
        let mut members = Vec::new();
        for i in 0..n {
            let dir = self.node_dir();
            let mut config = self.config_in(dir.path());
            config.p2p.listen = vec![listen.to_owned()];
            let node = Node::start(config).await.expect("node starts");
            self.register_node(first + i, dir.path(), &node).await;
            members.push(Member {
                dir,
                node: Some(node),
            });
        }
        let block = self.confirm().await;
        for m in &members {
            m.node().synced_to(block).await;
        }
        connected(&members, n - 1).await;
        members
    }
}

/// A node running as its own `hanzo-node run` process, on fixed loopback ports so
/// that it can be killed and started again where its peers expect it.
pub struct Process {
    /// The data dir (from [`Devnet::node_dir`]).
    pub dir: tempfile::TempDir,
    /// Git smart-HTTP and metrics.
    pub http: SocketAddr,
    /// The libp2p listen address.
    pub listen: String,
    /// The process; killed (SIGKILL) when dropped.
    pub process: Option<Killed>,
}

impl Process {
    /// The smart-HTTP URL of repo `name`.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}.git", self.http)
    }

    /// The bare repo of token `id`.
    pub fn repo_dir(&self, id: u64) -> std::path::PathBuf {
        self.dir.path().join("repos").join(format!("{id}.git"))
    }

    /// Kills the process with SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.process = None;
    }
}

impl Devnet {
    /// Runs `hanzo-node run` on a fresh data dir and free ports, registered as the
    /// operator of dev account `account`. `env` adds or overrides settings.
    pub async fn spawn_operator(&self, account: usize, env: &[(&str, &str)]) -> Process {
        let http = free_addr();
        let listen = format!("/ip4/127.0.0.1/tcp/{}", free_addr().port());
        let mut p = Process {
            dir: self.node_dir(),
            http,
            listen,
            process: None,
        };
        self.respawn(&mut p, env);
        let endpoint = format!("http://{} {}", p.http, p.listen);
        self.register_endpoint(account, p.dir.path(), &endpoint)
            .await;
        p
    }

    /// Starts `p`'s process (again), on its data dir and ports.
    pub fn respawn(&self, p: &mut Process, env: &[(&str, &str)]) {
        let mut cmd = self.run_command(p, env);
        p.process = Some(Killed(cmd.spawn().expect("run hanzo-node")));
    }

    /// `hanzo-node run` for `p`'s data dir and ports, `env` added.
    pub fn run_command(&self, p: &Process, env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(crate::node_bin());
        cmd.arg("run")
            .env("HANZO_DATA_DIR", p.dir.path())
            .env("HANZO_CHAIN_RPC_URL", self.anvil.endpoint())
            .env("HANZO_CHAIN_POLL_INTERVAL", "50ms")
            .env("HANZO_HTTP_LISTEN", p.http.to_string())
            .env("HANZO_P2P_LISTEN", &p.listen)
            .env("HANZO_P2P_SYNC_INTERVAL", "1s")
            .envs(self.node_env())
            .env(
                "HANZO_LOG",
                std::env::var("HANZO_LOG").unwrap_or_else(|_| "warn".into()),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

/// Waits until every running member has at least `peers` peers.
pub async fn connected(members: &[Member], peers: usize) {
    for m in members.iter().filter(|m| m.node.is_some()) {
        let p2p = m.node().p2p.clone().expect("p2p on");
        eventually(Duration::from_secs(30), async || {
            (p2p.peers().len() >= peers).then_some(())
        })
        .await;
    }
}
