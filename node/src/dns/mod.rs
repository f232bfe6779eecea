//! The node's endpoints as a pkarr signed DNS packet on the Mainline DHT, and the
//! resolution of other nodes' packets.
//!
//! The node key signs the packet, so a node is reachable from its key alone (the key
//! is on chain). The records, each with TTL [`TTL`], under the key's zone:
//!
//! * `_hanzo` TXT `v=hanzo1` `chain=<chain id>` and, once registered,
//!   `operator=<0x address>`;
//! * `_git` TXT `url=<git smart-HTTP base URL>`, and SVCB (port, IPv4 hint) when the
//!   URL's host is an IPv4 address;
//! * `_grpc` TXT `url=<gRPC URL>` when configured;
//! * `_dnsaddr` TXT `dnsaddr=<libp2p multiaddr>`, one per address, with no `/p2p/`
//!   suffix (the PeerId is the key itself).
//!
//! [`Publisher`] (an actor) publishes at start, at once when an endpoint changes, and
//! every `dns.republish_interval`; each new packet is dated after any packet it has
//! seen for its key; failures back off and retry; the last packet is kept in the store
//! and republished after a restart. [`Resolver`] answers "where is this node", after
//! checking on chain that the key is an active operator's.

pub mod keep;
pub mod server;
pub mod zone;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::Arc,
    time::Duration,
};

use alloy::primitives::Address;
use pkarr::{
    Keypair, PublicKey, SignedPacket, Timestamp,
    dns::{
        Name,
        rdata::{RData, SVCB, TXT},
    },
};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    acl::{Acl, Snapshot},
    config::DnsConfig,
    keys::{NodeId, NodeKey},
    store::Store,
};

const TARGET: &str = "hanzo::dns";

/// TTL of every record, in seconds.
pub const TTL: u32 = 300;
/// Longest wait between retries of a failed publish.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often the actor looks for changed endpoints besides ACL changes.
const CHECK_INTERVAL: Duration = Duration::from_secs(30);

/// Why publishing or resolving failed.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start the DHT client: {0}")]
    Client(String),
    #[error("DHT publish failed: {0}")]
    Publish(#[from] pkarr::errors::PublishError),
    #[error(
        "no DNS packet for node key {0} on the DHT or at any relay: is that node running with dns.enabled, and does this side reach the same DHT (dns.bootstrap) or a node's relay (dns.relays)?"
    )]
    NotFound(NodeId),
    #[error("cannot build the DNS packet: {0}")]
    Build(String),
    #[error("the DNS packet of node key {node} is malformed: {reason}")]
    Malformed { node: NodeId, reason: String },
    #[error("{0}")]
    Target(String),
}

/// Where a node can be reached, as its packet says.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Endpoints {
    /// Git smart-HTTP base URL (repos at `<url>/<name>.git`).
    pub git: Option<String>,
    /// gRPC URL.
    pub grpc: Option<String>,
    /// libp2p multiaddrs, without `/p2p/`.
    pub p2p: Vec<String>,
    /// Chain id of the deployment the node follows.
    pub chain_id: u64,
    /// The operator that registered the node, once it has.
    pub operator: Option<Address>,
}

/// A DHT client as `config` says (DHT only, no HTTP relays).
pub fn client(config: &DnsConfig) -> Result<pkarr::Client, Error> {
    let mut builder = pkarr::Client::builder();
    builder
        .no_relays()
        .dht_request_timeout(config.request_timeout);
    if !config.bootstrap.is_empty() {
        builder.bootstrap(&config.bootstrap);
    }
    // A DHT on loopback (a devnet's, a test's) has a handful of nodes: do not warn
    // that a publish reached fewer nodes than on the real Mainline.
    if !config.bootstrap.is_empty()
        && config
            .bootstrap
            .iter()
            .all(|b| b.starts_with("127.") || b.starts_with("localhost:"))
    {
        builder.dht_report_policy(pkarr::dht::ReportPolicy::testnet());
    }
    let (bind, port, server) = (config.bind, config.port, config.server_mode);
    builder.dht(|c| {
        c.bind_address = bind;
        c.port = port;
        c.server_mode = server;
        c
    });
    builder.build().map_err(|e| Error::Client(e.to_string()))
}

/// The pkarr key pair of the node key (the same ed25519 key).
pub fn keypair(key: &NodeKey) -> Keypair {
    Keypair::from_secret_key(&key.seed())
}

/// The pkarr public key of node key `node`.
pub fn public_key(node: &NodeId) -> Result<PublicKey, Error> {
    PublicKey::try_from(&node.0)
        .map_err(|e| Error::Target(format!("{node} is no ed25519 key: {e}")))
}

/// Signs `endpoints` as a packet dated `timestamp`. Libp2p addresses that would
/// take the packet over the DHT's 1000-byte limit are left out; returns how many.
pub fn packet(
    key: &Keypair,
    endpoints: &Endpoints,
    timestamp: Timestamp,
) -> Result<(SignedPacket, usize), Error> {
    let mut p2p = endpoints.p2p.len();
    loop {
        match build(key, endpoints, &endpoints.p2p[..p2p], timestamp) {
            Ok(packet) => return Ok((packet, endpoints.p2p.len() - p2p)),
            Err(pkarr::errors::SignedPacketBuildError::PacketTooLarge(_)) if p2p > 0 => p2p -= 1,
            Err(e) => return Err(Error::Build(e.to_string())),
        }
    }
}

fn build(
    key: &Keypair,
    endpoints: &Endpoints,
    p2p: &[String],
    timestamp: Timestamp,
) -> Result<SignedPacket, pkarr::errors::SignedPacketBuildError> {
    let name = |n: &'static str| Name::new_unchecked(n);
    let txt = |strings: &[&str]| -> Result<TXT<'static>, pkarr::errors::SignedPacketBuildError> {
        let mut t = TXT::new();
        for s in strings {
            t.add_string(s)
                .map_err(pkarr::errors::SignedPacketBuildError::FailedToWrite)?;
        }
        Ok(t.into_owned())
    };
    let chain = format!("chain={}", endpoints.chain_id);
    let operator = endpoints.operator.map(|a| format!("operator={a}"));
    let mut hanzo = vec!["v=hanzo1", chain.as_str()];
    hanzo.extend(operator.as_deref());
    let mut builder =
        SignedPacket::builder()
            .timestamp(timestamp)
            .txt(name("_hanzo"), txt(&hanzo)?, TTL);
    if let Some(url) = &endpoints.git {
        builder = builder.txt(name("_git"), txt(&[&format!("url={url}")])?, TTL);
        if let Some(addr) = socket_v4(url) {
            let mut svcb = SVCB::new(1, Name::new_unchecked("."));
            svcb.set_port(addr.port());
            svcb.set_ipv4hint(&[u32::from(*addr.ip())]);
            builder = builder.svcb(name("_git"), svcb, TTL);
        }
    }
    if let Some(url) = &endpoints.grpc {
        builder = builder.txt(name("_grpc"), txt(&[&format!("url={url}")])?, TTL);
    }
    for addr in p2p {
        builder = builder.txt(name("_dnsaddr"), txt(&[&format!("dnsaddr={addr}")])?, TTL);
    }
    builder.sign(key)
}

/// The IPv4 address and port of an `http(s)://a.b.c.d:port/…` URL.
fn socket_v4(url: &str) -> Option<SocketAddrV4> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    match host.parse::<SocketAddr>().ok()? {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

/// The endpoints a packet carries.
pub fn endpoints_of(packet: &SignedPacket) -> Result<Endpoints, Error> {
    let node = NodeId(packet.public_key().to_bytes());
    let malformed = |reason: String| Error::Malformed { node, reason };
    let values = |name: &str, key: &str| -> Vec<String> {
        packet
            .resource_records(name)
            .filter_map(|rr| match &rr.rdata {
                RData::TXT(t) => Some(
                    t.iter_raw()
                        .filter(|(k, _)| *k == key.as_bytes())
                        .map(|(_, v)| String::from_utf8_lossy(v.unwrap_or_default()).into_owned())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect()
    };
    if !values("_hanzo", "v").iter().any(|v| v == "hanzo1") {
        return Err(malformed("no `_hanzo` TXT record with v=hanzo1".into()));
    }
    let chain_id = values("_hanzo", "chain")
        .first()
        .ok_or_else(|| malformed("no chain= in `_hanzo`".into()))?
        .parse()
        .map_err(|e| malformed(format!("chain=: {e}")))?;
    let operator = values("_hanzo", "operator")
        .first()
        .map(|a| a.parse().map_err(|e| malformed(format!("operator=: {e}"))))
        .transpose()?;
    Ok(Endpoints {
        git: values("_git", "url").into_iter().next(),
        grpc: values("_grpc", "url").into_iter().next(),
        p2p: values("_dnsaddr", "dnsaddr"),
        chain_id,
        operator,
    })
}

/// A node found through the DHT and checked on chain.
#[derive(Clone, Debug, Serialize)]
pub struct Resolved {
    /// Its node key.
    pub node_key: NodeId,
    /// The operator that registered it, per the chain.
    pub operator: Address,
    /// Its endpoints, per its packet.
    #[serde(flatten)]
    pub endpoints: Endpoints,
    /// When the packet was signed (unix microseconds).
    pub published_us: u64,
}

/// The largest pkarr relay payload: a signature, a timestamp and the DHT's 1000 bytes.
pub const MAX_RELAY_PAYLOAD: usize = 64 + 8 + 1000;
/// How long a relay may take to answer.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves node keys to endpoints over the DHT, and else through pkarr relays.
#[derive(Clone, Debug)]
pub struct Resolver {
    client: pkarr::Client,
    relays: Vec<String>,
    http: reqwest::Client,
}

impl Resolver {
    /// A resolver on `client`.
    pub fn new(client: pkarr::Client) -> Self {
        Self {
            client,
            relays: Vec::new(),
            http: reqwest::Client::new(),
        }
    }

    /// The same, asking the pkarr relays at base URLs `relays` (nodes' HTTP
    /// listeners) in turn when the DHT has no packet.
    pub fn with_relays(mut self, relays: &[String]) -> Self {
        self.relays = relays
            .iter()
            .map(|r| r.trim_end_matches('/').to_owned())
            .collect();
        self
    }

    /// The newest packet of `node` on the DHT, else from the first relay that has
    /// one (pkarr checks its signature by the key either way), and its endpoints.
    pub async fn endpoints(&self, node: &NodeId) -> Result<(Endpoints, Timestamp), Error> {
        let key = public_key(node)?;
        let packet = match self
            .client
            .resolve(&key, pkarr::ResolvePolicy::NetworkOnly)
            .await
        {
            Ok(p) => p,
            Err(_) => self.ask_relays(&key).await.ok_or(Error::NotFound(*node))?,
        };
        Ok((endpoints_of(&packet)?, packet.timestamp()))
    }

    async fn ask_relays(&self, key: &PublicKey) -> Option<SignedPacket> {
        for relay in &self.relays {
            match self.ask_relay(relay, key).await {
                Ok(p) => return Some(p),
                Err(why) => warn!(target: TARGET, relay, %why, "the pkarr relay gave no packet"),
            }
        }
        None
    }

    async fn ask_relay(&self, relay: &str, key: &PublicKey) -> Result<SignedPacket, String> {
        let url = format!("{relay}/pkarr/{}", key.to_z32());
        let mut response = self
            .http
            .get(&url)
            .timeout(RELAY_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {} from {url}", response.status()));
        }
        let mut payload = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if payload.len() + chunk.len() > MAX_RELAY_PAYLOAD {
                return Err(format!("{url} sent over {MAX_RELAY_PAYLOAD} bytes"));
            }
            payload.extend_from_slice(&chunk);
        }
        SignedPacket::from_relay_payload(key, &payload.into())
            .map_err(|e| format!("{url} sent no packet signed by the key: {e}"))
    }

    /// Resolves `target` (a node key as 0x-hex or z-base-32, or an operator's 0x
    /// address) after checking in `acl` that it is an active operator's node.
    pub async fn resolve(&self, acl: &Snapshot, target: &str) -> Result<Resolved, Error> {
        let (node, operator) = operator_node(acl, target)?;
        let (endpoints, published) = self.endpoints(&node).await?;
        Ok(Resolved {
            node_key: node,
            operator,
            endpoints,
            published_us: published.as_u64(),
        })
    }
}

/// The node key `target` names, and its operator, if it is an active operator's.
pub fn operator_node(acl: &Snapshot, target: &str) -> Result<(NodeId, Address), Error> {
    let t = target.trim();
    let hex = t.strip_prefix("0x").unwrap_or(t);
    let node = if hex.len() == 40 {
        let addr: Address = t
            .parse()
            .map_err(|e| Error::Target(format!("{t:?} is not an address: {e}")))?;
        let op = acl.state.operators.get(&addr).ok_or_else(|| {
            Error::Target(format!("{addr} is not a registered operator on chain"))
        })?;
        op.node_key
    } else if hex.len() == 64 {
        let bytes = alloy::hex::decode(hex)
            .map_err(|e| Error::Target(format!("{t:?} is not a hex node key: {e}")))?;
        NodeId(bytes.try_into().unwrap_or([0; 32]))
    } else {
        let key = PublicKey::try_from(t).map_err(|_| {
            Error::Target(format!(
                "{t:?} is neither a node key (0x + 64 hex, or z-base-32) nor an operator address (0x + 40 hex)"
            ))
        })?;
        NodeId(key.to_bytes())
    };
    let (addr, op) = acl.state.operator_by_node(&node).ok_or_else(|| {
        Error::Target(format!(
            "node key {node} is not registered by any operator on chain"
        ))
    })?;
    if !acl.is_operator(&node) {
        return Err(Error::Target(format!(
            "operator {addr} of node key {node} has stake {} ETH, below the minimum {} ETH",
            crate::acl::eth(op.balance.stake),
            crate::acl::eth(acl.state.params.min_operator_stake)
        )));
    }
    Ok((node, *addr))
}

/// What the publisher reports after each successful publish.
#[derive(Clone, Debug)]
pub struct Published {
    /// The packet's timestamp (unix microseconds).
    pub timestamp: u64,
    /// The endpoints it carries.
    pub endpoints: Endpoints,
}

/// Where the publisher learns the node's endpoints.
pub struct Sources {
    /// The node key, as pkarr's key pair.
    pub keypair: Keypair,
    /// Git base URL.
    pub git: Option<String>,
    /// gRPC URL.
    pub grpc: Option<String>,
    /// Chain id.
    pub chain_id: u64,
    /// The ACL (for the operator address).
    pub acl: Acl,
    /// The swarm's listen addresses (without `/p2p/`), when p2p is on.
    pub p2p: Option<tokio::sync::watch::Receiver<Vec<libp2p::Multiaddr>>>,
}

impl Sources {
    async fn endpoints(&self) -> Endpoints {
        let node = NodeId(self.keypair.public_key().to_bytes());
        let snapshot = self.acl.snapshot();
        let mut p2p = Vec::new();
        if let Some(listening) = &self.p2p {
            // Once the swarm listens somewhere: a packet without them would go out first.
            let mut rx = listening.clone();
            if let Ok(addrs) = rx.wait_for(|a| !a.is_empty()).await {
                p2p.extend(addrs.iter().map(ToString::to_string));
            }
        }
        Endpoints {
            git: self.git.clone(),
            grpc: self.grpc.clone(),
            p2p,
            chain_id: self.chain_id,
            operator: snapshot.state.operator_by_node(&node).map(|(a, _)| *a),
        }
    }
}

/// The publishing actor's handle.
#[derive(Clone, Debug)]
pub struct Publisher {
    published: watch::Receiver<Option<Published>>,
}

impl Publisher {
    /// Starts publishing on `client`; the task ends at `cancel`.
    pub fn spawn(
        client: pkarr::Client,
        sources: Sources,
        store: Arc<Store>,
        interval: Duration,
        cancel: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(run(client, sources, store, interval, tx, cancel));
        (Self { published: rx }, task)
    }

    /// The last successful publish.
    pub fn published(&self) -> Option<Published> {
        self.published.borrow().clone()
    }

    /// Waits for a publish after the one seen last.
    pub async fn changed(&mut self) -> Option<Published> {
        self.published.changed().await.ok()?;
        self.published()
    }
}

async fn run(
    client: pkarr::Client,
    mut sources: Sources,
    store: Arc<Store>,
    interval: Duration,
    tx: watch::Sender<Option<Published>>,
    cancel: CancellationToken,
) {
    let keypair = sources.keypair.clone();
    let me = NodeId(keypair.public_key().to_bytes());
    // The packet published before a restart, if it is ours and readable.
    let mut last: Option<SignedPacket> = store
        .dns_packet()
        .ok()
        .flatten()
        .and_then(|b| SignedPacket::deserialize(&b).ok())
        .filter(|p| p.public_key().to_bytes() == me.0);
    // Whatever the DHT holds for this key dates the next packet after it.
    let mut floor = last.as_ref().map_or(0, |p| p.timestamp().as_u64());
    if let Ok(seen) = client
        .resolve(&keypair.public_key(), pkarr::ResolvePolicy::NetworkOnly)
        .await
    {
        floor = floor.max(seen.timestamp().as_u64());
    }
    let mut current = sources.endpoints().await;
    let mut due = tokio::time::Instant::now();
    let mut check = tokio::time::interval(CHECK_INTERVAL);
    let mut backoff = Duration::from_secs(1);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            // The operator address (ACL) or a listen address may have changed.
            changed = sources.acl.changed() => {
                if changed.is_err() {
                    return;
                }
                refresh(&sources, &mut current, &mut due).await;
            }
            _ = check.tick() => refresh(&sources, &mut current, &mut due).await,
            () = tokio::time::sleep_until(due) => {
                let reuse = last.as_ref().filter(|p| endpoints_of(p).ok().as_ref() == Some(&current));
                let packet = match reuse {
                    Some(p) => p.clone(),
                    None => {
                        let at = Timestamp::now().as_u64().max(floor + 1);
                        match packet(&keypair, &current, Timestamp::from(at)) {
                            Ok((p, 0)) => p,
                            Ok((p, dropped)) => {
                                warn!(target: TARGET, dropped, "libp2p addresses left out of the DNS packet: it would pass the DHT's 1000-byte limit");
                                p
                            }
                            Err(e) => {
                                warn!(target: TARGET, err = %e, "cannot build the DNS packet");
                                due = tokio::time::Instant::now() + interval;
                                continue;
                            }
                        }
                    }
                };
                match client.publish(&packet).await {
                    Ok(stored) => {
                        let timestamp = packet.timestamp().as_u64();
                        floor = floor.max(timestamp);
                        if let Err(e) = store.put_dns_packet(&packet.serialize()) {
                            warn!(target: TARGET, err = %e, "cannot keep the published DNS packet");
                        }
                        info!(target: TARGET, node = %me, ?stored, git = ?current.git, p2p = current.p2p.len(), "DNS packet published");
                        last = Some(packet);
                        backoff = Duration::from_secs(1);
                        due = tokio::time::Instant::now() + interval;
                        tx.send_replace(Some(Published { timestamp, endpoints: current.clone() }));
                    }
                    Err(e) => {
                        if matches!(e, pkarr::errors::PublishError::NotMostRecent) {
                            // Someone published a newer packet for this key: date ours after it.
                            if let Ok(seen) = client.resolve(&keypair.public_key(), pkarr::ResolvePolicy::CacheOnly).await {
                                floor = floor.max(seen.timestamp().as_u64());
                            }
                            last = None;
                        }
                        warn!(target: TARGET, err = %e, retry_in = ?backoff, "DNS publish failed; retrying");
                        due = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
    }
}

/// Re-reads the endpoints; a change makes a publish due now.
async fn refresh(sources: &Sources, current: &mut Endpoints, due: &mut tokio::time::Instant) {
    let next = sources.endpoints().await;
    if next != *current {
        *current = next;
        *due = tokio::time::Instant::now();
    }
}

/// The URL to publish for a listener on `listen`: `configured` if set, else
/// `http://<listen>` (the loopback address when it listens on every interface, which
/// only works on this machine).
pub fn advertised_url(configured: Option<&str>, listen: SocketAddr, setting: &str) -> String {
    if let Some(url) = configured {
        return url.trim_end_matches('/').to_owned();
    }
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        warn!(target: TARGET, %listen, setting, "listening on every interface with no public URL set: publishing the loopback address; set the URL others reach");
        addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn endpoints(p2p: usize) -> Endpoints {
        Endpoints {
            git: Some("http://203.0.113.7:8680".into()),
            grpc: Some("https://node.example.org:8690".into()),
            p2p: (0..p2p)
                .map(|i| format!("/ip4/203.0.113.{i}/udp/8681/quic-v1"))
                .collect(),
            chain_id: 31337,
            operator: Some(Address::repeat_byte(7)),
        }
    }

    #[test]
    fn a_packet_round_trips_its_endpoints() {
        let key = keypair(&NodeKey::generate());
        let e = endpoints(3);
        let (p, dropped) = packet(&key, &e, Timestamp::now()).unwrap();
        assert_eq!(dropped, 0);
        assert_eq!(endpoints_of(&p).unwrap(), e);
        // The git record also has an SVCB with the port.
        assert!(
            p.resource_records("_git")
                .any(|rr| matches!(&rr.rdata, RData::SVCB(s) if s.priority == 1))
        );
        // Serialized (as stored) and read back, it is the same packet.
        let back = SignedPacket::deserialize(&p.serialize()).unwrap();
        assert_eq!(endpoints_of(&back).unwrap(), e);
    }

    #[test]
    fn many_addresses_stay_under_the_dht_limit() {
        let key = keypair(&NodeKey::generate());
        let e = endpoints(60);
        let (p, dropped) = packet(&key, &e, Timestamp::now()).unwrap();
        assert!(dropped > 0 && dropped < 60, "dropped {dropped}");
        assert!(
            p.encoded_packet().len() <= 1000,
            "{}",
            p.encoded_packet().len()
        );
        let got = endpoints_of(&p).unwrap();
        assert_eq!(got.p2p, e.p2p[..60 - dropped]);
        assert_eq!(got.git, e.git);
    }

    #[test]
    fn a_packet_without_our_records_is_malformed() {
        let key = Keypair::random();
        let p = SignedPacket::builder()
            .txt(
                Name::new_unchecked("_hanzo"),
                TXT::new().with_string("v=other").unwrap(),
                TTL,
            )
            .sign(&key)
            .unwrap();
        let err = endpoints_of(&p).unwrap_err().to_string();
        assert!(err.contains("v=hanzo1"), "{err}");
    }

    #[test]
    fn targets_parse_or_say_what_they_expect() {
        let acl = Snapshot::default();
        let err = operator_node(&acl, "nonsense").unwrap_err().to_string();
        assert!(err.contains("neither a node key"), "{err}");
        let err = operator_node(&acl, &format!("{}", Address::repeat_byte(1)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a registered operator"), "{err}");
        let node = NodeKey::generate().public();
        let err = operator_node(&acl, &node.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("not registered by any operator"), "{err}");
        let z32 = public_key(&node).unwrap().to_z32();
        let err = operator_node(&acl, &z32).unwrap_err().to_string();
        assert!(err.contains("not registered by any operator"), "{err}");
    }

    #[test]
    fn urls_default_to_the_listener() {
        let url = |c: Option<&str>, a: &str| advertised_url(c, a.parse().unwrap(), "dns.git_url");
        assert_eq!(url(None, "127.0.0.1:8680"), "http://127.0.0.1:8680");
        assert_eq!(url(None, "0.0.0.0:8680"), "http://127.0.0.1:8680");
        assert_eq!(
            url(Some("https://git.example.org/"), "0.0.0.0:8680"),
            "https://git.example.org"
        );
    }
}
