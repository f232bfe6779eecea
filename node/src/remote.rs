//! `git-remote-hanzo`: git's remote helper for `hanzo://<repo>` URLs.
//!
//! git runs it as `git-remote-hanzo <remote> hanzo://<repo>`. It finds the nodes that
//! hold the repo on chain (the RepoToken's preferred replicators that are active
//! operators' nodes, else every active operator's node), resolves their node keys to
//! git URLs through pkarr, probes them best-first (by the latency and failures it
//! remembers per node), and hands the session to git's own smart-HTTP helper
//! (`git remote-http`) on the first node that answers. Push certificates, credential
//! helpers and every protocol version work as with a plain `http://` remote.
//!
//! Settings, from the environment or else git config: the chain RPC URL
//! (`HANZO_CHAIN_RPC_URL`, `hanzo.rpcUrl`), the deployment file
//! (`HANZO_CHAIN_DEPLOYMENT`, `hanzo.deployment`), and optionally the DHT bootstrap
//! (`HANZO_DNS_BOOTSTRAP`, `hanzo.dhtBootstrap`; default: the public Mainline DHT)
//! and request timeout (`HANZO_DNS_REQUEST_TIMEOUT`, `hanzo.dhtTimeout`), and pkarr
//! relays to ask when the DHT has no packet (`HANZO_DNS_RELAYS`, `hanzo.dnsRelays`:
//! nodes' HTTP base URLs, comma-separated).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::{
    chain::{self, Client},
    config::DnsConfig,
    dns::{self, Resolver},
    keys::NodeId,
    unix_now,
};

/// How long a probe of one node may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// A node that failed within this long is tried after the others.
const FAILURE_MEMORY: u64 = 600;
/// Weight of the newest latency sample in the running average.
const LATENCY_WEIGHT: f64 = 0.3;

/// Runs the helper with git's arguments (`<remote> <url>`); returns the exit code of
/// the session.
pub async fn run(args: &[String]) -> Result<ExitCode> {
    let [remote, url] = args else {
        bail!("usage: git-remote-hanzo <remote> hanzo://<repo> (git runs this for hanzo:// URLs)");
    };
    let repo = repo_name(url)?;
    let settings = Settings::load()?;
    let (provider, deployment) = chain::open(&settings.rpc_url, None, &settings.deployment)
        .await
        .context("reading the chain (hanzo.rpcUrl / HANZO_CHAIN_RPC_URL)")?;
    let acl = Client::new(provider, deployment).snapshot().await?;
    let nodes = acl.replicators(&repo)?;
    if nodes.is_empty() {
        bail!("repo {repo} has no active operator's node to serve it");
    }
    let resolver = Resolver::new(dns::client(&settings.dns)?).with_relays(&settings.dns.relays);
    let resolved =
        futures_util::future::join_all(nodes.iter().map(|n| resolver.endpoints(n))).await;

    let path = health_path();
    let mut health = Health::load(&path);
    let mut candidates: Vec<(NodeId, String)> = Vec::new();
    for (node, r) in nodes.iter().zip(resolved) {
        match r {
            Ok((e, _)) => match e.git {
                Some(git) => candidates.push((*node, git)),
                None => eprintln!("hanzo: node {node} publishes no git URL"),
            },
            Err(e) => eprintln!("hanzo: {e}"),
        }
    }
    health.order(&mut candidates);

    let http = reqwest::Client::builder()
        .timeout(PROBE_TIMEOUT)
        .build()
        .context("HTTP client")?;
    for (node, git) in &candidates {
        let target = format!("{}/{repo}.git", git.trim_end_matches('/'));
        let started = Instant::now();
        let probe = http
            .get(format!("{target}/info/refs?service=git-upload-pack"))
            .send()
            .await;
        // A private repo answers 401 to the probe: the node is up, credentials follow.
        let up = probe
            .as_ref()
            .is_ok_and(|r| r.status().is_success() || matches!(r.status().as_u16(), 401 | 403));
        if !up {
            let why = match probe {
                Ok(r) => format!("HTTP {}", r.status()),
                Err(e) => e.to_string(),
            };
            eprintln!("hanzo: node {node} at {git} is unavailable ({why}); trying the next");
            health.failed(node);
            continue;
        }
        health.answered(node, started.elapsed());
        health.save(&path);
        eprintln!("hanzo: using node {node} at {git}");
        let status = tokio::process::Command::new("git")
            .args(["remote-http", remote, &target])
            .status()
            .await
            .context("running git remote-http")?;
        if !status.success() {
            health.failed(node);
            health.save(&path);
        }
        return Ok(ExitCode::from(
            u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
        ));
    }
    health.save(&path);
    bail!(
        "no node serving repo {repo} is reachable ({} on chain, {} resolved through the DHT)",
        nodes.len(),
        candidates.len()
    )
}

/// The repo name of a `hanzo://<repo>` URL.
fn repo_name(url: &str) -> Result<String> {
    let name = url
        .strip_prefix("hanzo://")
        .with_context(|| format!("{url:?} is not a hanzo://<repo> URL"))?
        .trim_end_matches('/');
    let name = name.strip_suffix(".git").unwrap_or(name);
    if name.is_empty() || name.contains('/') {
        bail!("{url:?} should name one repo: hanzo://<repo>");
    }
    Ok(name.to_owned())
}

struct Settings {
    rpc_url: String,
    deployment: PathBuf,
    dns: DnsConfig,
}

impl Settings {
    fn load() -> Result<Self> {
        let get = |env: &str, key: &str| {
            std::env::var(env)
                .ok()
                .filter(|v| !v.is_empty())
                .or_else(|| git_config(key))
        };
        let rpc_url = get("HANZO_CHAIN_RPC_URL", "hanzo.rpcUrl").context(
            "no chain RPC URL: set it with `git config --global hanzo.rpcUrl <url>` or HANZO_CHAIN_RPC_URL",
        )?;
        let deployment = get("HANZO_CHAIN_DEPLOYMENT", "hanzo.deployment").context(
            "no deployment file: set it with `git config --global hanzo.deployment <path>` or HANZO_CHAIN_DEPLOYMENT",
        )?;
        let mut dns = DnsConfig::default();
        if let Some(b) = get("HANZO_DNS_BOOTSTRAP", "hanzo.dhtBootstrap") {
            dns.bootstrap = b.split(',').map(|s| s.trim().to_owned()).collect();
        }
        if let Some(r) = get("HANZO_DNS_RELAYS", "hanzo.dnsRelays") {
            dns.relays = r.split(',').map(|s| s.trim().to_owned()).collect();
        }
        if let Some(t) = get("HANZO_DNS_REQUEST_TIMEOUT", "hanzo.dhtTimeout") {
            dns.request_timeout = humantime::parse_duration(&t)
                .with_context(|| format!("DHT timeout {t:?} (e.g. 500ms)"))?;
        }
        Ok(Self {
            rpc_url,
            deployment: PathBuf::from(deployment),
            dns,
        })
    }
}

fn git_config(key: &str) -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["config", "--get", key])
        .output()
        .ok()?;
    let v = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !v.is_empty()).then_some(v)
}

/// Where the helper remembers nodes' health: `$XDG_CACHE_HOME/hanzo-node/` or
/// `~/.cache/hanzo-node/`.
fn health_path() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("hanzo-node")
        .join("remote-nodes.json")
}

/// What the helper remembers of one node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct NodeHealth {
    /// Running average of probe latency, in milliseconds.
    latency_ms: Option<f64>,
    /// Failures since the last success.
    failures: u32,
    /// Unix time of the last failure.
    last_failure: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Health {
    nodes: HashMap<String, NodeHealth>,
}

impl Health {
    fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .filter(|b| b.len() < 1 << 20)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, path: &Path) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
            std::fs::rename(tmp, path)
        };
        if let Err(e) = write() {
            eprintln!(
                "hanzo: cannot remember node health in {}: {e}",
                path.display()
            );
        }
    }

    /// Sorts `candidates` best first: nodes that failed recently last, then by
    /// latency (unknown ones after known ones), then by key.
    fn order(&self, candidates: &mut [(NodeId, String)]) {
        let now = unix_now();
        candidates.sort_by(|(a, _), (b, _)| {
            let key = |n: &NodeId| {
                let h = self.nodes.get(&n.to_string()).cloned().unwrap_or_default();
                let recent = h.failures > 0 && now.saturating_sub(h.last_failure) < FAILURE_MEMORY;
                (recent, h.latency_ms.unwrap_or(f64::MAX), n.0)
            };
            let (ka, kb) = (key(a), key(b));
            ka.0.cmp(&kb.0)
                .then(ka.1.total_cmp(&kb.1))
                .then(ka.2.cmp(&kb.2))
        });
    }

    fn answered(&mut self, node: &NodeId, took: Duration) {
        let h = self.nodes.entry(node.to_string()).or_default();
        let ms = took.as_secs_f64() * 1000.0;
        h.latency_ms = Some(h.latency_ms.map_or(ms, |l| l + LATENCY_WEIGHT * (ms - l)));
        h.failures = 0;
    }

    fn failed(&mut self, node: &NodeId) {
        let h = self.nodes.entry(node.to_string()).or_default();
        h.failures = h.failures.saturating_add(1);
        h.last_failure = unix_now();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn urls_name_one_repo() {
        assert_eq!(repo_name("hanzo://demo").unwrap(), "demo");
        assert_eq!(repo_name("hanzo://demo.git/").unwrap(), "demo");
        assert!(repo_name("http://demo").is_err());
        assert!(repo_name("hanzo://").is_err());
        assert!(repo_name("hanzo://a/b").is_err());
    }

    #[test]
    fn recently_failed_nodes_go_last_then_slow_ones() {
        let (a, b, c) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        let mut h = Health::default();
        h.answered(&a, Duration::from_millis(50));
        h.answered(&b, Duration::from_millis(5));
        h.failed(&c);
        let mut cands = vec![(c, "c".into()), (a, "a".into()), (b, "b".into())];
        h.order(&mut cands);
        let order: Vec<&str> = cands.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(order, ["b", "a", "c"]);
        // A failure pushes a fast node behind the ones that have not failed (and
        // ahead of slower failed ones); a success brings it forward again.
        h.failed(&b);
        h.order(&mut cands);
        let order: Vec<&str> = cands.iter().map(|(_, u)| u.as_str()).collect();
        assert_eq!(order, ["a", "b", "c"]);
        h.answered(&b, Duration::from_millis(5));
        h.order(&mut cands);
        assert_eq!(cands[0].1, "b");
    }
}
