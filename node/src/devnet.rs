//! `hanzo-node devnet`: the whole system on one machine, from one command. It starts
//! anvil (its state kept in the data dir), deploys the contracts, runs a Mainline DHT
//! on loopback, registers N operators and runs their nodes in this process, mints a
//! demo identity (`alice`, with a fresh SSH key) holding a demo repo and caller stake,
//! and prints what to try. Ctrl-C stops the nodes, then anvil (which writes its
//! state); running it again with the same data dir resumes.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use alloy::{
    primitives::{Address, U256},
    providers::Provider,
    signers::local::PrivateKeySigner,
};
use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::{
    acl::Key,
    chain::{self, Client, DeployParams, Deployment},
    config::{CONFIG_FILE, Config, Overrides},
    keys::{self, NODE_KEY_FILE, NodeKey, SshKey},
    node::Node,
};

const TARGET: &str = "hanzo::devnet";

/// The demo identity, repo and SSH key file.
const DEMO_HANDLE: &str = "alice";
const DEMO_REPO: &str = "demo";
const DEMO_SSH_KEY: &str = "alice_ed25519";
/// Chain state anvil loads at start and writes at exit (and every few seconds).
const ANVIL_STATE: &str = "anvil-state.json";
/// What anvil writes at start: its dev accounts and their keys.
const ANVIL_ACCOUNTS: &str = "anvil.json";
/// The running anvil's pid, so that the next run can stop one a killed devnet left.
const ANVIL_PID: &str = "anvil.pid";
/// The deployment file; it is written last, so its presence means set-up finished.
const DEPLOYMENT: &str = "deployment.json";
/// DHT request timeout on loopback.
const DHT_TIMEOUT: Duration = Duration::from_millis(200);
/// The most nodes a devnet runs (each needs a funded dev account).
pub const MAX_NODES: usize = 16;

/// What `hanzo-node devnet` takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How many operators' nodes.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=MAX_NODES as i64))]
    pub nodes: u16,
    /// anvil's JSON-RPC port.
    #[arg(long, default_value_t = 8545)]
    pub chain_port: u16,
    /// Node i listens on base + 10·i (git over HTTP, health, metrics), base + 10·i + 1
    /// (p2p), base + 10·i + 2 (gRPC) and base + 10·i + 3 (DNS, UDP and TCP).
    #[arg(long, default_value_t = 8680)]
    pub base_port: u16,
    /// The anvil binary [default: `anvil` on PATH, as `scripts/setup` installs it].
    #[arg(long, default_value = "anvil")]
    pub anvil: PathBuf,
    /// What runs callers' workloads: `process` (sandboxed processes) or `docker`
    /// (containers on the Docker Engine at `DOCKER_HOST`, else /var/run/docker.sock).
    #[arg(long, value_enum, default_value = "process")]
    pub runtime: crate::config::DeployRuntime,
    /// A local embedding model directory every node serves, named after the directory
    /// (`scripts/setup` fetches one: ~/.cache/hanzo-node/models/all-MiniLM-L6-v2).
    /// Repeat for more.
    #[arg(long = "model", value_name = "DIR")]
    pub models: Vec<PathBuf>,
}

/// Where node `i` listens.
struct Ports {
    http: SocketAddr,
    p2p: String,
    rpc: SocketAddr,
    dns: SocketAddr,
}

impl Args {
    fn ports(&self, i: usize) -> Result<Ports> {
        let port = |k: usize| -> Result<u16> {
            u16::try_from(usize::from(self.base_port) + 10 * i + k).with_context(|| {
                format!("--base-port {} leaves no port for node {i}", self.base_port)
            })
        };
        Ok(Ports {
            http: (Ipv4Addr::LOCALHOST, port(0)?).into(),
            p2p: format!("/ip4/127.0.0.1/tcp/{}", port(1)?),
            rpc: (Ipv4Addr::LOCALHOST, port(2)?).into(),
            dns: (Ipv4Addr::LOCALHOST, port(3)?).into(),
        })
    }

    fn chain_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.chain_port)
    }
}

/// Node `i`'s data dir.
fn node_dir(root: &Path, i: usize) -> PathBuf {
    root.join(format!("node-{i}"))
}

/// Runs the devnet in `root` until Ctrl-C (or SIGTERM), which may come at any point:
/// what has started by then is stopped in order (nodes, then anvil).
pub async fn run(root: &Path, args: &Args, log: Option<String>) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let started = Instant::now();
    let (mut interrupt, mut terminate) = (
        signal(SignalKind::interrupt())?,
        signal(SignalKind::terminate())?,
    );
    let stop = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    tokio::pin!(stop);
    std::fs::create_dir_all(root)
        .with_context(|| format!("cannot create the devnet dir {}", root.display()))?;
    let root = &root.canonicalize()?;

    let n = usize::from(args.nodes);
    let mut anvil = tokio::select! {
        anvil = Anvil::start(root, args, n + 2) => anvil?,
        () = &mut stop => return Ok(()),
    };
    let mut parts = Parts {
        nodes: Vec::with_capacity(n),
        dht: None,
    };
    let up = tokio::select! {
        up = start(root, args, log, &anvil, &mut parts, started) => up,
        () = &mut stop => Ok(false),
    };
    if matches!(up, Ok(true)) {
        stop.await;
    }
    eprintln!("devnet: stopping {} nodes and anvil", parts.nodes.len());
    for node in parts.nodes {
        node.shutdown().await;
    }
    drop(parts.dht);
    anvil.stop().await;
    if up.is_ok() {
        eprintln!("devnet: stopped; its state is in {}", root.display());
    }
    up.map(|_| ())
}

/// What runs in this process, kept where a stop at any moment can reach it.
struct Parts {
    nodes: Vec<Node>,
    dht: Option<mainline::Testnet>,
}

/// Sets up (first run) or checks (later runs) the chain, starts the DHT and the nodes
/// (into `parts`), waits for them and prints the summary; `true` once it is printed.
async fn start(
    root: &Path,
    args: &Args,
    log: Option<String>,
    anvil: &Anvil,
    parts: &mut Parts,
    started: Instant,
) -> Result<bool> {
    let n = usize::from(args.nodes);
    let dev = anvil.accounts(root).await?;
    let deployment = match Deployment::load(&root.join(DEPLOYMENT)) {
        Ok(d) => {
            resume_check(&anvil.url, &d, root, args).await?;
            d
        }
        Err(_) => set_up(root, args, &dev, &anvil.url).await?,
    };
    // Blocks every second from now on, so confirmations come without transactions.
    let provider = chain::connect(&anvil.url, None).await?;
    provider
        .raw_request::<_, ()>("evm_setIntervalMining".into(), (1,))
        .await
        .context("evm_setIntervalMining")?;

    let dht = tokio::task::spawn_blocking(|| mainline::Testnet::builder(5).build()).await??;
    let bootstrap = dht.bootstrap.clone();
    parts.dht = Some(dht);
    for i in 0..n {
        let mut config = Config::load(&Overrides {
            data_dir: Some(node_dir(root, i)),
            dns_bootstrap: Some(bootstrap.clone()),
            dns_request_timeout: Some(DHT_TIMEOUT),
            log: log.clone(),
            ..Overrides::default()
        })?;
        config.deploy.runtime = args.runtime;
        for dir in &args.models {
            config.inference.models.push(crate::config::ModelConfig {
                path: Some(dir.clone()),
                ..crate::config::ModelConfig::new(
                    &dir.file_name().unwrap_or_default().to_string_lossy(),
                    crate::config::ModelBackend::Local,
                )
            });
        }
        let node = match Node::start(config).await {
            Ok(node) => node,
            Err(e) => {
                let e = anyhow::Error::from(e);
                let hint = if format!("{e:#}").contains("in use") {
                    "; a port is taken: choose others with --base-port"
                } else {
                    ""
                };
                return Err(e.context(format!("node {i} ({}){hint}", node_dir(root, i).display())));
            }
        };
        parts.nodes.push(node);
    }
    let nodes = &parts.nodes;
    let waiting = ready(nodes, &provider).await;
    let summary = Summary {
        root,
        args,
        deployment: &deployment,
        bootstrap: &bootstrap,
        alice: dev.alice(n),
        nodes,
    };
    print!("{}", summary.text(started.elapsed(), &waiting)?);
    Ok(true)
}

/// anvil as a child process in its own process group, so Ctrl-C reaches the devnet
/// first and anvil stops last.
struct Anvil {
    child: Child,
    url: String,
    root: PathBuf,
}

impl Anvil {
    async fn start(root: &Path, args: &Args, accounts: usize) -> Result<Self> {
        let state = root.join(ANVIL_STATE);
        reap_left_behind(&root.join(ANVIL_PID), &state).await;
        let accounts_file = root.join(ANVIL_ACCOUNTS);
        let _ = std::fs::remove_file(&accounts_file);
        let mut child = Command::new(&args.anvil)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &args.chain_port.to_string(),
            ])
            .args(["--accounts", &accounts.max(10).to_string()])
            .arg("--state")
            .arg(&state)
            .args(["--state-interval", "5", "--silent", "--config-out"])
            .arg(&accounts_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {}: run scripts/setup (it installs anvil) or pass --anvil",
                    args.anvil.display()
                )
            })?;
        let url = args.chain_url();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = tokio::io::AsyncReadExt::read_to_string(&mut e, &mut err).await;
                }
                bail!(
                    "anvil exited ({status}) at start: {}; is port {} taken? (--chain-port)",
                    err.trim(),
                    args.chain_port
                );
            }
            if let Ok(p) = chain::connect(&url, None).await
                && p.get_chain_id().await.is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("anvil did not answer at {url} within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Some(pid) = child.id() {
            std::fs::write(root.join(ANVIL_PID), pid.to_string())?;
        }
        info!(target: TARGET, %url, "anvil is up");
        Ok(Self {
            child,
            url,
            root: root.to_path_buf(),
        })
    }

    /// anvil's dev accounts, from the file it writes at start.
    async fn accounts(&self, root: &Path) -> Result<DevAccounts> {
        let path = root.join(ANVIL_ACCOUNTS);
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&path)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                let keys = v["private_keys"]
                    .as_array()
                    .context("anvil's account file has no private_keys")?
                    .iter()
                    .map(|k| keys::parse_private_key(k.as_str().unwrap_or_default()))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(DevAccounts(keys));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!("anvil wrote no account file at {}", path.display())
    }

    /// SIGINT, which makes anvil write its state, then a wait; SIGKILL after 10 s.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            warn!(target: TARGET, "anvil did not stop within 10 s; killing it");
            let _ = self.child.kill().await;
        }
        let _ = std::fs::remove_file(self.root.join(ANVIL_PID));
    }
}

/// Stops the anvil a devnet killed with SIGKILL left running on this data dir (its
/// pid file names it, and its command line names this dir's state file), so that it
/// writes its state and frees its port.
async fn reap_left_behind(pid_file: &Path, state: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
    else {
        return;
    };
    let ours = |pid: i32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let c = String::from_utf8_lossy(&c);
            c.contains("anvil") && c.contains(&*state.to_string_lossy())
        })
    };
    if !ours(pid) {
        return;
    }
    warn!(target: TARGET, pid, "stopping the anvil a killed devnet left running");
    let pid_t = nix::unistd::Pid::from_raw(pid);
    let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGINT);
    for _ in 0..100 {
        if !ours(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = nix::sys::signal::kill(pid_t, nix::sys::signal::Signal::SIGKILL);
}

/// anvil's funded dev accounts: 0 deploys, 1..=n operate the nodes, n+1 is alice.
/// Test keys everyone knows, never for real funds.
struct DevAccounts(Vec<PrivateKeySigner>);

impl DevAccounts {
    fn get(&self, i: usize) -> Result<PrivateKeySigner> {
        self.0
            .get(i)
            .cloned()
            .with_context(|| format!("anvil has no dev account {i}"))
    }

    fn alice(&self, n: usize) -> Option<PrivateKeySigner> {
        self.0.get(n + 1).cloned()
    }
}

/// A client signing as `key`, polling receipts fast (anvil mines at once).
async fn client(url: &str, key: PrivateKeySigner, deployment: &Deployment) -> Result<Client> {
    let provider = chain::connect(url, Some(key)).await?;
    provider
        .client()
        .set_poll_interval(Duration::from_millis(10));
    Ok(Client::new(provider, deployment.clone()))
}

/// First run: contracts, operators and their data dirs, alice, her key, repo and stake.
async fn set_up(root: &Path, args: &Args, dev: &DevAccounts, url: &str) -> Result<Deployment> {
    println!(
        "devnet: first run in {}: deploying and registering",
        root.display()
    );
    let admin = dev.get(0)?;
    let provider = chain::connect(url, Some(admin.clone())).await?;
    provider
        .client()
        .set_poll_interval(Duration::from_millis(10));
    let params = DeployParams {
        min_operator_stake: eth(1),
        min_caller_stake: eth(1) / U256::from(10),
        unbonding_period: 60,
    };
    let deployment = chain::deploy(&provider, admin.address(), &params).await?;
    let deployment_file = root.join(DEPLOYMENT);
    for i in 0..usize::from(args.nodes) {
        let dir = node_dir(root, i);
        std::fs::create_dir_all(&dir)?;
        let key_file = dir.join(NODE_KEY_FILE);
        let key = if key_file.exists() {
            NodeKey::load(&key_file)?
        } else {
            let k = NodeKey::generate();
            k.save(&key_file)?;
            k
        };
        let ports = args.ports(i)?;
        std::fs::write(
            dir.join(CONFIG_FILE),
            node_config(&dir, &deployment_file, url, &ports).dump(),
        )?;
        let operator = client(url, dev.get(i + 1)?, &deployment).await?;
        let endpoint = format!("http://{} {}", ports.http, ports.p2p);
        operator
            .register_operator(key.public().to_b256(), &endpoint, eth(2))
            .await?;
    }
    let alice_key = dev.get(usize::from(args.nodes) + 1)?;
    let alice = client(url, alice_key, &deployment).await?;
    let ssh = ssh_keygen(&root.join(DEMO_SSH_KEY)).await?;
    alice.mint_identity(DEMO_HANDLE).await?;
    alice.add_key(DEMO_HANDLE, &Key::Ssh(ssh)).await?;
    alice.create_repo(DEMO_REPO, DEMO_HANDLE, false).await?;
    alice
        .set_member(DEMO_REPO, DEMO_HANDLE, crate::acl::Member::Committer, true)
        .await?;
    alice.deposit_caller(eth(1)).await?;
    deployment.save(&deployment_file)?;
    Ok(deployment)
}

/// A later run: the chain anvil loaded must still hold the contracts, and the nodes
/// must be the ones set up, on the same ports (their endpoints are on chain).
async fn resume_check(url: &str, deployment: &Deployment, root: &Path, args: &Args) -> Result<()> {
    let start_over = format!("remove {} to start a new devnet", root.display());
    let provider = chain::connect(url, None).await?;
    let code = provider.get_code_at(deployment.stake_registry).await?;
    if code.is_empty() {
        bail!(
            "the chain anvil loaded from {} does not hold the contracts in {}; {start_over}",
            root.join(ANVIL_STATE).display(),
            root.join(DEPLOYMENT).display(),
        );
    }
    let set_up = (0..)
        .take_while(|&i| node_dir(root, i).join(CONFIG_FILE).exists())
        .count();
    if set_up != usize::from(args.nodes) {
        bail!("this devnet was set up with {set_up} nodes: pass --nodes {set_up}, or {start_over}");
    }
    for i in 0..set_up {
        let config = Config::load(&Overrides {
            data_dir: Some(node_dir(root, i)),
            ..Overrides::default()
        })?;
        if config.http.listen != args.ports(i)?.http {
            bail!(
                "node {i} of this devnet listens on {} (set up with another --base-port); \
                 pass that port's base, or {start_over}",
                config.http.listen
            );
        }
    }
    Ok(())
}

/// Node `dir`'s settings: loopback ports, a fast chain poll, the devnet's DHT bound to
/// loopback.
fn node_config(dir: &Path, deployment: &Path, url: &str, ports: &Ports) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    c.chain.rpc_url = url.into();
    c.chain.deployment = deployment.to_path_buf();
    c.chain.confirmations = 1;
    c.chain.poll_interval = Duration::from_millis(250);
    c.http.listen = ports.http;
    c.p2p.listen = vec![ports.p2p.clone()];
    c.p2p.sync_interval = Duration::from_secs(5);
    c.rpc.listen = ports.rpc;
    // Any page may call a devnet node and sign in from its own origin: a dApp under
    // development runs on some localhost port.
    c.rpc.origins = vec!["*".into()];
    c.dns.bind = Some(Ipv4Addr::LOCALHOST);
    c.dns.request_timeout = DHT_TIMEOUT;
    c.dns.server.enabled = true;
    c.dns.server.listen = ports.dns;
    c
}

/// A fresh SSH ed25519 key pair at `path` (and `path.pub`), made by ssh-keygen as a
/// user would; an existing pair is kept.
async fn ssh_keygen(path: &Path) -> Result<SshKey> {
    let public = path.with_extension("pub");
    if !public.exists() {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice@devnet", "-f"])
            .arg(path)
            .output()
            .await
            .context("cannot run ssh-keygen: install openssh-client (scripts/setup does)")?;
        if !out.status.success() {
            bail!(
                "ssh-keygen failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    let line = std::fs::read_to_string(&public)?;
    Ok(SshKey::parse_line(line.trim())?)
}

fn eth(n: u64) -> U256 {
    U256::from(n) * U256::from(10u64).pow(U256::from(18))
}

/// Waits (at most 60 s) until every node has synced the demo repo, published its DNS
/// packet and connected to the others; returns what is still missing.
async fn ready(nodes: &[Node], provider: &alloy::providers::DynProvider) -> Vec<String> {
    let head = provider.get_block_number().await.unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing: Vec<String> = nodes
            .iter()
            .enumerate()
            .flat_map(|(i, node)| {
                let mut m = Vec::new();
                let status = node.status.borrow().clone();
                if !status.is_synced() || status.synced < Some(head) {
                    m.push(format!("node {i} has not synced the chain"));
                }
                if node.acl.snapshot().repo(DEMO_REPO).is_err() {
                    m.push(format!("node {i} does not know repo {DEMO_REPO} yet"));
                }
                if node.dns.as_ref().is_some_and(|d| d.published().is_none()) {
                    m.push(format!("node {i} has not published its DNS packet"));
                }
                if node
                    .p2p
                    .as_ref()
                    .is_some_and(|p| p.peers().len() + 1 < nodes.len())
                {
                    m.push(format!("node {i} is not connected to every other node"));
                }
                m
            })
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the devnet prints once it is up.
struct Summary<'a> {
    root: &'a Path,
    args: &'a Args,
    deployment: &'a Deployment,
    bootstrap: &'a [String],
    alice: Option<PrivateKeySigner>,
    nodes: &'a [Node],
}

impl Summary<'_> {
    fn text(&self, took: Duration, waiting: &[String]) -> Result<String> {
        use std::fmt::Write;
        let root = self.root.display();
        let chain = self.args.chain_url();
        let last = self.nodes.len() - 1;
        let mut s = String::new();
        writeln!(
            s,
            "\nhanzo devnet: {} nodes up in {:.1} s; state in {root} (Ctrl-C stops it, running it again resumes)\n",
            self.nodes.len(),
            took.as_secs_f64()
        )?;
        writeln!(
            s,
            "  chain   {chain}  (anvil, chain id {}; contracts in {root}/{DEPLOYMENT})",
            self.deployment.chain_id
        )?;
        writeln!(
            s,
            "  dht     {}  (Mainline, loopback)",
            self.bootstrap.join(",")
        )?;
        for (i, node) in self.nodes.iter().enumerate() {
            let key = NodeKey::load(&node_dir(self.root, i).join(NODE_KEY_FILE))?.public();
            let p = self.args.ports(i)?;
            writeln!(s, "  node {i}  key {key}")?;
            writeln!(
                s,
                "          git http://{}  grpc http://{}  p2p {}  data {}",
                node.http_addr,
                node.rpc_addr.map_or("off".into(), |a| a.to_string()),
                p.p2p,
                node_dir(self.root, i).display()
            )?;
        }
        let alice: Option<Address> = self.alice.as_ref().map(PrivateKeySigner::address);
        writeln!(
            s,
            "  alice   identity {DEMO_HANDLE}, SSH key {root}/{DEMO_SSH_KEY}, committer of repo {DEMO_REPO}, caller stake 1 ETH (account {})",
            alice.map_or("?".into(), |a| a.to_string())
        )?;
        for w in waiting {
            writeln!(s, "  not ready yet: {w}")?;
        }
        let exe = std::env::current_exe()?;
        let mut path = vec![exe.parent().unwrap_or(Path::new(".")).to_path_buf()];
        if let Some(buf) = on_path("buf") {
            path.push(buf);
        }
        let path: Vec<String> = path.iter().map(|p| p.display().to_string()).collect();
        let grpc = self.nodes[0].rpc_addr.map(|a| format!("http://{a}"));
        writeln!(
            s,
            "\nTry it, in another shell (the helper git-remote-hanzo finds a node for hanzo:// on the DHT):"
        )?;
        writeln!(
            s,
            "  export PATH={}:$PATH HANZO_CHAIN_RPC_URL={chain} HANZO_CHAIN_DEPLOYMENT={root}/{DEPLOYMENT} HANZO_DNS_BOOTSTRAP={} HANZO_DNS_REQUEST_TIMEOUT={}ms",
            path.join(":"),
            self.bootstrap.join(","),
            DHT_TIMEOUT.as_millis()
        )?;
        writeln!(s, "  git clone hanzo://{DEMO_REPO} && cd {DEMO_REPO}")?;
        writeln!(
            s,
            "  git config user.name {DEMO_HANDLE} && git config user.email {DEMO_HANDLE}@devnet"
        )?;
        writeln!(
            s,
            "  git config gpg.format ssh && git config user.signingkey {root}/{DEMO_SSH_KEY}"
        )?;
        writeln!(
            s,
            "  git commit --allow-empty -m 'hello from {DEMO_HANDLE}'"
        )?;
        writeln!(s, "  git push --signed origin HEAD:main")?;
        writeln!(
            s,
            "  git ls-remote http://{}/{DEMO_REPO}.git    # the push, replicated to node {last}",
            self.nodes[last].http_addr
        )?;
        if let (Some(grpc), Some(a)) = (grpc, &self.alice) {
            writeln!(
                s,
                "  TOKEN=$(HANZO_PRIVATE_KEY=0x{} hanzo-node caller sign-in {grpc})",
                hex::encode(a.to_bytes())
            )?;
            writeln!(
                s,
                "  buf curl --protocol grpc --http2-prior-knowledge -H \"authorization: Bearer $TOKEN\" {grpc}/hanzo.node.v1.NodeService/GetStatus"
            )?;
            writeln!(
                s,
                "  HANZO_PRIVATE_KEY=0x{} hanzo-node compose --url {grpc} ps    # beside a docker-compose.yml: up, logs -f, exec -it, down",
                hex::encode(a.to_bytes())
            )?;
        }
        if let (Some(model), Some(_)) = (self.args.models.first(), &self.alice) {
            writeln!(
                s,
                "  curl -s http://{}/v1/embeddings -H \"authorization: Bearer $TOKEN\" -d '{{\"model\":\"{}\",\"input\":[\"hello world\"]}}'",
                self.nodes[0].http_addr,
                model.file_name().unwrap_or_default().to_string_lossy()
            )?;
        }
        writeln!(
            s,
            "  curl -sf http://{0}/dashboard/config.json    # the dashboard: open http://{0}/dashboard/ in a browser with a wallet",
            self.nodes[0].http_addr
        )?;
        if let Some(dns) = self.nodes[0].dns_addr {
            let key = NodeKey::load(&node_dir(self.root, 0).join(NODE_KEY_FILE))?.public();
            let z32 = crate::dns::public_key(&key)
                .map(|k| k.to_z32())
                .unwrap_or_default();
            writeln!(
                s,
                "  dig @{} -p {} _git.{z32} TXT +short    # node 0's records, by its key; DNS-over-HTTPS at http://{}/dns-query",
                dns.ip(),
                dns.port(),
                self.nodes[0].http_addr
            )?;
        }
        writeln!(
            s,
            "  HANZO_DATA_DIR={} hanzo-node acl show; curl -s http://{}/readiness",
            node_dir(self.root, 0).display(),
            self.nodes[0].http_addr
        )?;
        Ok(s)
    }
}

/// The directory on PATH holding `program`.
fn on_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| d.join(program).is_file())
}
