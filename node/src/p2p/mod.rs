//! Replication among staked operators' nodes over libp2p.
//!
//! One task owns the swarm (TCP and QUIC, noise, yamux, identify, ping, Kademlia,
//! gossipsub, and raw streams for packs and catch-up); the rest of the node talks to
//! it through [`P2p`]. Only active operators' node keys may connect ([`gate`]).
//!
//! * An accepted push is published on its repo's topic as a [`wire::RefUpdate`].
//! * A received update is validated by the node: the certificate and the pusher's
//!   rights against this node's ACL (`git::Git::plan`), the missing objects fetched
//!   over `/hanzo/pack/1` from the forwarding peer, the author, or any other peer,
//!   then applied (`git::Git::commit`). Only then is it accepted, and gossipsub
//!   forwards it: a node announces what it can serve. Invalid updates are rejected
//!   (the sender's score drops); updates this node cannot use are ignored.
//! * Catch-up: on every new connection and every `p2p.sync_interval`, a node sends
//!   each peer its digest per repo on `/hanzo/sync/1`; the peer answers with its
//!   records for the repos that differ, which go through the same checks.

mod gate;
mod limits;
pub mod wire;

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol, Swarm,
    futures::{AsyncReadExt as _, AsyncWriteExt as _},
    gossipsub::{self, IdentTopic, MessageAcceptance, MessageAuthenticity, MessageId},
    identify, kad,
    multiaddr::Protocol,
    noise, ping,
    swarm::{NetworkBehaviour, SwarmEvent, dial_opts::DialOpts},
    tcp, yamux,
};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, ReadBuf},
    sync::{Semaphore, mpsc, watch},
    task::JoinHandle,
};
use tokio_util::{compat::FuturesAsyncReadCompatExt, sync::CancellationToken};
use tracing::{debug, info, warn};

use crate::{
    acl::{Acl, Snapshot},
    config::P2pConfig,
    git::{Git, Refusal, Update},
    http::Reason,
    keys::NodeKey,
};
use limits::Limits;
use wire::{PackRequest, RefUpdate, SyncRequest, SyncResponse};

const TARGET: &str = "hanzo::p2p";
const PACK_PROTOCOL: StreamProtocol = StreamProtocol::new("/hanzo/pack/1");
const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/hanzo/sync/1");
/// Updates being verified, fetched and applied at once.
const MAX_REPLICATIONS: usize = 16;
/// A pack response starts with one of these.
const PACK_OK: u8 = 0;
const PACK_REFUSED: u8 = 1;

/// Why the swarm could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configured address is not a multiaddr.
    #[error("p2p.{setting}: {addr:?} is not a multiaddr: {reason}")]
    Addr {
        /// Which setting.
        setting: &'static str,
        /// The value.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The swarm could not be built or could not listen.
    #[error("p2p: {0}")]
    Swarm(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    gate: gate::Gate,
    limits: libp2p::connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// Replication metrics, registered into `/metrics`.
pub struct Metrics {
    updates: Family<Reason, Counter>,
    fetch_failures: Family<Reason, Counter>,
    bytes_fetched: Counter,
    latency: Histogram,
    peers: Gauge,
    denied: Counter,
}

impl Metrics {
    fn new() -> Self {
        Self {
            updates: Family::default(),
            fetch_failures: Family::default(),
            bytes_fetched: Counter::default(),
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 14,
            )),
            peers: Gauge::default(),
            denied: Counter::default(),
        }
    }

    /// Adds the metrics to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hanzo_p2p_updates",
            "Replicated ref updates by outcome (applied, have, invalid, unusable)",
            self.updates.clone(),
        );
        registry.register(
            "hanzo_p2p_fetch_failures",
            "Pack fetches from peers that failed, by reason",
            self.fetch_failures.clone(),
        );
        registry.register(
            "hanzo_p2p_bytes_fetched",
            "Pack bytes received from peers",
            self.bytes_fetched.clone(),
        );
        registry.register(
            "hanzo_p2p_announce_to_applied_seconds",
            "From a push accepted on its node to the update applied here",
            self.latency.clone(),
        );
        registry.register(
            "hanzo_p2p_peers_connected",
            "Operators' nodes connected now",
            self.peers.clone(),
        );
        registry.register(
            "hanzo_p2p_peers_denied",
            "Connections refused since start: the peer is no active operator's node",
            self.denied.clone(),
        );
    }

    fn count(&self, family: &Family<Reason, Counter>, reason: &str) {
        family
            .get_or_create(&Reason {
                reason: reason.into(),
            })
            .inc();
    }
}

enum Cmd {
    /// Publishes raw bytes on a repo's topic (tools and tests of validation).
    PublishRaw { repo: u64, data: Vec<u8> },
}

/// A handle to the running swarm.
#[derive(Clone)]
pub struct P2p {
    /// This node's PeerId (its node key).
    pub peer_id: PeerId,
    listen: watch::Receiver<Vec<Multiaddr>>,
    peers: watch::Receiver<Vec<PeerId>>,
    metrics: Arc<Metrics>,
    commands: mpsc::Sender<Cmd>,
}

impl P2p {
    /// Builds the swarm, listens, and spawns the task that drives it until `cancel`.
    pub fn start(
        key: &NodeKey,
        config: P2pConfig,
        acl: Acl,
        git: Git,
        cancel: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>), Error> {
        let parse = |setting, list: &[String]| {
            list.iter()
                .map(|a| {
                    a.parse::<Multiaddr>().map_err(|e| Error::Addr {
                        setting,
                        addr: a.clone(),
                        reason: e.to_string(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let listen = parse("listen", &config.listen)?;
        let bootstrap = parse("bootstrap", &config.bootstrap)?;
        let mut seed = key.seed();
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed[..])
            .map_err(|e| Error::Swarm(format!("node key: {e}")))?;
        let peer_id = keypair.public().to_peer_id();
        let max_message = config.max_message_bytes;
        let max_connections = config.max_connections;
        let swarm_err = |e: &dyn std::fmt::Display| Error::Swarm(e.to_string());
        let metrics = Arc::new(Metrics::new());
        let denied = metrics.denied.clone();
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| swarm_err(&e))?
            .with_quic()
            .with_behaviour(|key| {
                let gossip_config = gossipsub::ConfigBuilder::default()
                    .validate_messages()
                    .validation_mode(gossipsub::ValidationMode::Strict)
                    .max_transmit_size(max_message)
                    // Updates are validated after their objects arrive: keep them
                    // long enough to be forwarded then.
                    .history_length(60)
                    .heartbeat_interval(Duration::from_millis(500))
                    .message_id_fn(|m: &gossipsub::Message| {
                        MessageId::from(&Sha256::digest(&m.data)[..20])
                    })
                    .build()
                    .map_err(|e| e.to_string())?;
                let mut gossipsub = gossipsub::Behaviour::new(
                    MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )
                .map_err(str::to_owned)?;
                gossipsub
                    .with_peer_score(
                        gossipsub::PeerScoreParams::default(),
                        gossipsub::PeerScoreThresholds::default(),
                    )
                    .map_err(|e| e.clone())?;
                let local = key.public().to_peer_id();
                let mut kad = kad::Behaviour::with_config(
                    local,
                    kad::store::MemoryStore::new(local),
                    kad::Config::new(StreamProtocol::new("/hanzo/kad/1")),
                );
                kad.set_mode(Some(kad::Mode::Server));
                Ok(Behaviour {
                    gate: gate::Gate {
                        allowed: HashSet::new(),
                        denied: denied.clone(),
                    },
                    limits: libp2p::connection_limits::Behaviour::new(
                        libp2p::connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(max_connections))
                            .with_max_established_per_peer(Some(4)),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/hanzo/1".into(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::default(),
                    kad,
                    gossipsub,
                    stream: libp2p_stream::Behaviour::new(),
                })
            })
            .map_err(|e| swarm_err(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        for addr in listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| Error::Swarm(format!("listen on {addr}: {e}")))?;
        }
        let (listen_tx, listen_rx) = watch::channel(Vec::new());
        let (peers_tx, peers_rx) = watch::channel(Vec::new());
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let shared = Arc::new(Shared {
            git,
            control: swarm.behaviour().stream.new_control(),
            limits: Limits::new(
                config.max_messages_per_sec,
                config.max_bytes_per_sec,
                config.max_transfers_per_peer,
            ),
            metrics: metrics.clone(),
            replications: Semaphore::new(MAX_REPLICATIONS),
            max_message,
        });
        let driver = Driver {
            swarm,
            acl,
            shared,
            bootstrap,
            sync_interval: config.sync_interval,
            listen: listen_tx,
            peers: peers_tx,
            connected: HashSet::new(),
        };
        let task = tokio::spawn(driver.run(cmd_rx, cancel));
        info!(target: TARGET, %peer_id, "p2p started");
        Ok((
            Self {
                peer_id,
                listen: listen_rx,
                peers: peers_rx,
                metrics,
                commands: cmd_tx,
            },
            task,
        ))
    }

    /// The addresses the swarm listens on, each ending in `/p2p/<peer id>`, once it
    /// listens on at least one.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let mut rx = self.listen.clone();
        let addrs = rx.wait_for(|a| !a.is_empty()).await.map(|a| a.clone());
        addrs.unwrap_or_default()
    }

    /// The peers connected now.
    pub fn peers(&self) -> Vec<PeerId> {
        self.peers.borrow().clone()
    }

    /// Replication metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Publishes `data` as is on repo `repo`'s topic. For tools and tests that check
    /// how peers validate what they receive.
    pub async fn publish_raw(&self, repo: u64, data: Vec<u8>) {
        let _ = self.commands.send(Cmd::PublishRaw { repo, data }).await;
    }
}

/// The gossip topic of repo `repo`.
fn topic(repo: u64) -> IdentTopic {
    IdentTopic::new(format!("hanzo/repo/{repo}"))
}

/// What replication tasks share with the driver.
struct Shared {
    git: Git,
    control: libp2p_stream::Control,
    limits: Limits,
    metrics: Arc<Metrics>,
    replications: Semaphore,
    max_message: usize,
}

/// A validation result for gossipsub, sent back to the driver.
struct Validated {
    id: MessageId,
    from: PeerId,
    acceptance: MessageAcceptance,
}

struct Driver {
    swarm: Swarm<Behaviour>,
    acl: Acl,
    shared: Arc<Shared>,
    bootstrap: Vec<Multiaddr>,
    sync_interval: Duration,
    listen: watch::Sender<Vec<Multiaddr>>,
    peers: watch::Sender<Vec<PeerId>>,
    connected: HashSet<PeerId>,
}

impl Driver {
    async fn run(mut self, mut commands: mpsc::Receiver<Cmd>, cancel: CancellationToken) {
        let (validated_tx, mut validated) = mpsc::channel::<Validated>(256);
        let mut accepted = self.shared.git.accepted();
        let mut acl = self.acl.clone();
        self.refresh(&acl.snapshot());
        for addr in self.bootstrap.clone() {
            let _ = self.swarm.dial(addr);
        }
        let mut control = self.shared.control.clone();
        let mut serving = tokio::task::JoinSet::new();
        for (protocol, pack) in [(PACK_PROTOCOL, true), (SYNC_PROTOCOL, false)] {
            match control.accept(protocol) {
                Ok(incoming) => {
                    serving.spawn(serve(self.shared.clone(), incoming, pack));
                }
                Err(e) => warn!(target: TARGET, %e, "cannot accept streams"),
            }
        }
        let mut tick = tokio::time::interval(self.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_event(event, &validated_tx),
                Some(v) = validated.recv() => {
                    let _ = self.swarm.behaviour_mut().gossipsub.report_message_validation_result(
                        &v.id, &v.from, v.acceptance,
                    );
                }
                update = accepted.recv() => match update {
                    Ok(update) => self.announce(update),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(target: TARGET, missed = n, "announcements dropped; catch-up will carry them");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                },
                Some(cmd) = commands.recv() => match cmd {
                    Cmd::PublishRaw { repo, data } => {
                        if let Err(e) = self.swarm.behaviour_mut().gossipsub.publish(topic(repo), data) {
                            debug!(target: TARGET, %e, "publish");
                        }
                    }
                },
                changed = acl.changed() => match changed {
                    Ok(snapshot) => self.refresh(&snapshot),
                    Err(_) => break,
                },
                _ = tick.tick() => {
                    self.dial_operators();
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                    let peers = self.connected.iter().copied().collect();
                    tokio::spawn(catch_up(self.shared.clone(), peers));
                }
            }
        }
        serving.abort_all();
    }

    /// Applies a new ACL: who may stay connected, which topics to follow, whom to dial.
    fn refresh(&mut self, snapshot: &Snapshot) {
        let allowed = gate::allowed(snapshot);
        let gone: Vec<PeerId> = self
            .connected
            .iter()
            .filter(|p| !allowed.contains(p))
            .copied()
            .collect();
        self.swarm.behaviour_mut().gate.allowed = allowed;
        for peer in gone {
            info!(target: TARGET, %peer, "disconnecting: no longer an active operator's node");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        let git = &self.shared.git;
        let gossip = &mut self.swarm.behaviour_mut().gossipsub;
        for id in snapshot.state.repos.keys() {
            let t = topic(*id);
            if git.replicates(snapshot, *id) {
                if gossip.subscribe(&t).unwrap_or(false) {
                    // Invalid updates on this topic cost the sender.
                    let params = gossipsub::TopicScoreParams {
                        invalid_message_deliveries_weight: -100.0,
                        invalid_message_deliveries_decay: 0.5,
                        ..Default::default()
                    };
                    let _ = gossip.set_topic_params(t, params);
                }
            } else {
                gossip.unsubscribe(&t);
            }
        }
        self.dial_operators();
    }

    /// Dials active operators not connected, at the multiaddrs of their on-chain
    /// endpoint (and whatever Kademlia knows).
    fn dial_operators(&mut self) {
        let snapshot = self.acl.snapshot();
        let me = *self.swarm.local_peer_id();
        for (_, op) in snapshot.active_operators() {
            let Some(peer) = gate::peer_id(&op.node_key) else {
                continue;
            };
            if peer == me || self.swarm.is_connected(&peer) {
                continue;
            }
            let addrs = endpoint_addrs(&op.endpoint);
            for addr in &addrs {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
            }
            let _ = self.swarm.dial(
                DialOpts::peer_id(peer)
                    .addresses(addrs)
                    .extend_addresses_through_behaviour()
                    .build(),
            );
        }
    }

    fn announce(&mut self, update: Update) {
        let Ok(cert) = crate::git::cert::PushCert::parse(update.cert.clone()) else {
            return;
        };
        let message = RefUpdate {
            repo: update.repo,
            refs: cert
                .commands
                .iter()
                .map(|c| {
                    let b = |id: gix::ObjectId| *id.as_bytes().first_chunk().unwrap_or(&[0; 20]);
                    (c.name.clone(), b(c.old), b(c.new))
                })
                .collect(),
            cert: update.cert,
            announced_ms: unix_ms(),
        };
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic(message.repo), message.encode())
        {
            Ok(_) => debug!(target: TARGET, repo = message.repo, "announced update"),
            // No peer yet: catch-up carries it when one connects.
            Err(e) => debug!(target: TARGET, %e, repo = message.repo, "update not announced"),
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>, validated: &mpsc::Sender<Validated>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let me = *self.swarm.local_peer_id();
                info!(target: TARGET, %address, "listening");
                self.listen
                    .send_modify(|a| a.push(address.with(Protocol::P2p(me))));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if self.connected.insert(peer_id) {
                    debug!(target: TARGET, peer = %peer_id, "peer connected");
                    self.publish_peers();
                }
                if num_established.get() == 1 {
                    tokio::spawn(catch_up(self.shared.clone(), vec![peer_id]));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if self.connected.remove(&peer_id) => {
                debug!(target: TARGET, peer = %peer_id, "peer disconnected");
                self.shared.limits.forget(&peer_id);
                self.publish_peers();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => self.on_message(propagation_source, message_id, message, validated),
            _ => {}
        }
    }

    fn publish_peers(&mut self) {
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        #[allow(clippy::cast_possible_wrap)] // a peer count
        self.shared.metrics.peers.set(peers.len() as i64);
        self.peers.send_replace(peers);
    }

    fn on_message(
        &mut self,
        from: PeerId,
        id: MessageId,
        message: gossipsub::Message,
        validated: &mpsc::Sender<Validated>,
    ) {
        let shared = self.shared.clone();
        let report = |acceptance| Validated {
            id: id.clone(),
            from,
            acceptance,
        };
        // Gossip reaches only operators, but the author may be anyone who signed.
        let author_ok = message
            .source
            .is_some_and(|s| self.swarm.behaviour().gate.allowed.contains(&s));
        if !author_ok {
            shared.metrics.count(&shared.metrics.updates, "invalid");
            debug!(target: TARGET, peer = %from, source = ?message.source, "update authored by no active operator");
            let _ = validated.try_send(report(MessageAcceptance::Reject));
            return;
        }
        if !shared.limits.message(from) {
            shared
                .metrics
                .count(&shared.metrics.updates, "rate_limited");
            let _ = validated.try_send(report(MessageAcceptance::Ignore));
            return;
        }
        let update = match RefUpdate::decode(&message.data, shared.max_message) {
            Ok(u) => u,
            Err(e) => {
                shared.metrics.count(&shared.metrics.updates, "invalid");
                debug!(target: TARGET, peer = %from, %e, "undecodable update");
                let _ = validated.try_send(report(MessageAcceptance::Reject));
                return;
            }
        };
        let mut sources = vec![from];
        if let Some(author) = message.source
            && author != from
        {
            sources.push(author);
        }
        let others: Vec<PeerId> = self
            .connected
            .iter()
            .filter(|p| !sources.contains(p))
            .copied()
            .collect();
        sources.extend(others);
        let announced_ms = update.announced_ms;
        let validated = validated.clone();
        tokio::spawn(async move {
            let Ok(_permit) = shared.replications.acquire().await else {
                return;
            };
            let acceptance = match replicate(&shared, update.into_update(), &sources).await {
                Ok(applied) => {
                    if applied {
                        let ms = unix_ms().saturating_sub(announced_ms);
                        #[allow(clippy::cast_precision_loss)] // milliseconds
                        shared.metrics.latency.observe(ms as f64 / 1000.0);
                    }
                    MessageAcceptance::Accept
                }
                Err(Refusal::Invalid(why)) => {
                    warn!(target: TARGET, peer = %from, %why, "rejected update");
                    MessageAcceptance::Reject
                }
                Err(Refusal::Unusable(why)) => {
                    debug!(target: TARGET, peer = %from, %why, "ignored update");
                    MessageAcceptance::Ignore
                }
            };
            let _ = validated
                .send(Validated {
                    id,
                    from,
                    acceptance,
                })
                .await;
        });
    }
}

/// The multiaddrs in an operator's on-chain endpoint (whitespace- or
/// comma-separated; other entries, such as URLs, are skipped), without `/p2p/`.
pub fn endpoint_addrs(endpoint: &str) -> Vec<Multiaddr> {
    endpoint
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| s.starts_with('/'))
        .filter_map(|s| s.parse::<Multiaddr>().ok())
        .map(without_peer_id)
        .collect()
}

/// `addr` without a trailing `/p2p/<peer id>`.
pub fn without_peer_id(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Verifies, fetches and applies `update`, fetching from `sources` in order. Returns
/// whether anything changed.
async fn replicate(shared: &Shared, update: Update, sources: &[PeerId]) -> Result<bool, Refusal> {
    let outcome = replicate_inner(shared, update, sources).await;
    let label = match &outcome {
        Ok(true) => "applied",
        Ok(false) => "have",
        Err(Refusal::Invalid(_)) => "invalid",
        Err(Refusal::Unusable(_)) => "unusable",
    };
    shared.metrics.count(&shared.metrics.updates, label);
    outcome
}

async fn replicate_inner(
    shared: &Shared,
    update: Update,
    sources: &[PeerId],
) -> Result<bool, Refusal> {
    let Some(plan) = shared.git.plan(update).await? else {
        return Ok(false);
    };
    if plan.wants.is_empty() {
        return shared.git.commit(plan, None).await.map(|a| a.refs > 0);
    }
    let mut last = String::from("no peer to fetch from");
    for peer in sources {
        let started = Instant::now();
        match fetch(shared, *peer, &plan).await {
            Ok(incoming) => {
                let fetched = started.elapsed();
                let outcome = shared.git.commit(plan, Some(incoming)).await;
                debug!(target: TARGET, %peer, ?fetched, checked = ?started.elapsed() - fetched, "fetched and checked");
                return outcome.map(|a| a.refs > 0);
            }
            Err((reason, why)) => {
                shared.metrics.count(&shared.metrics.fetch_failures, reason);
                debug!(target: TARGET, %peer, %why, "fetch failed");
                last = format!("{peer}: {why}");
            }
        }
    }
    Err(Refusal::Unusable(format!(
        "objects unavailable; last try {last}"
    )))
}

/// Fetches the objects `plan` wants from `peer` into a quarantine.
async fn fetch(
    shared: &Shared,
    peer: PeerId,
    plan: &crate::git::replica::Plan,
) -> Result<crate::git::replica::Incoming, (&'static str, String)> {
    let mut control = shared.control.clone();
    let mut stream = control
        .open_stream(peer, PACK_PROTOCOL)
        .await
        .map_err(|e| ("stream", e.to_string()))?;
    let request = PackRequest {
        repo: plan.repo,
        wants: plan.wants.clone(),
        haves: plan.haves.clone(),
    };
    wire::write_frame(&mut stream, &request)
        .await
        .map_err(|e| ("stream", e.to_string()))?;
    let mut status = [0u8; 1];
    stream
        .read_exact(&mut status)
        .await
        .map_err(|e| ("stream", e.to_string()))?;
    if status[0] != PACK_OK {
        let why: String = wire::read_frame(&mut stream, "refusal", 4096)
            .await
            .unwrap_or_else(|e| e.to_string());
        return Err(("refused", why));
    }
    let counted = Counted {
        inner: stream.compat(),
        total: Arc::new(AtomicU64::new(0)),
    };
    let total = counted.total.clone();
    let body: crate::git::BodyReader =
        Box::new(tokio::io::BufReader::with_capacity(64 << 10, counted));
    let result = shared.git.receive_replica(plan, body).await;
    shared
        .metrics
        .bytes_fetched
        .inc_by(total.load(Ordering::Relaxed));
    result.map_err(|e| ("invalid_pack", e.to_string()))
}

/// Compares digests with each of `peers` (computed once for all) and applies
/// whatever they have that this node lacks.
async fn catch_up(shared: Arc<Shared>, peers: Vec<PeerId>) {
    let snapshot = shared.git.acl_snapshot();
    let mut repos = Vec::new();
    for id in snapshot.state.repos.keys() {
        if shared.git.replicates(&snapshot, *id)
            && let Ok(digest) = shared.git.digest(*id)
        {
            repos.push((*id, digest));
        }
    }
    if repos.is_empty() {
        return;
    }
    let request = SyncRequest { repos };
    for peer in peers {
        match exchange(&shared, peer, &request).await {
            Ok(response) => apply_from(&shared, peer, response).await,
            Err(why) => debug!(target: TARGET, %peer, %why, "catch-up failed"),
        }
    }
}

/// Sends `request` to `peer` on the sync protocol and reads its answer.
async fn exchange(
    shared: &Shared,
    peer: PeerId,
    request: &SyncRequest,
) -> Result<SyncResponse, String> {
    let mut control = shared.control.clone();
    let mut stream = control
        .open_stream(peer, SYNC_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    wire::write_frame(&mut stream, request)
        .await
        .map_err(|e| e.to_string())?;
    wire::read_frame::<SyncResponse>(&mut stream, "sync response", wire::MAX_SYNC_RESPONSE)
        .await
        .map_err(|e| e.to_string())
}

/// Applies the updates `peer` answered a catch-up with, fetching from it.
async fn apply_from(shared: &Shared, peer: PeerId, response: SyncResponse) {
    let count = response.updates.len();
    let mut applied = 0;
    for update in response.updates {
        match replicate(shared, update, &[peer]).await {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => debug!(target: TARGET, %peer, %e, "catch-up update not applied"),
        }
    }
    if applied > 0 {
        info!(target: TARGET, %peer, updates = count, applied, "caught up");
    }
}

/// Serves inbound streams of the pack (`pack`) or sync protocol.
async fn serve(shared: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams, pack: bool) {
    while let Some((peer, stream)) = incoming.next().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let result = if pack {
                serve_pack(&shared, peer, stream).await
            } else {
                serve_sync(&shared, stream).await
            };
            if let Err(why) = result {
                debug!(target: TARGET, %peer, %why, pack, "serving a peer failed");
            }
        });
    }
}

async fn serve_sync(shared: &Shared, mut stream: Stream) -> Result<(), String> {
    let request: SyncRequest = wire::read_frame(&mut stream, "sync request", wire::MAX_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    let snapshot = shared.git.acl_snapshot();
    let mut updates = Vec::new();
    for (repo, digest) in request.repos {
        if !shared.git.replicates(&snapshot, repo) {
            continue;
        }
        if shared.git.digest(repo).map_err(|e| e.to_string())? != digest {
            updates.extend(shared.git.updates(repo).map_err(|e| e.to_string())?);
        }
    }
    wire::write_frame(&mut stream, &SyncResponse { updates })
        .await
        .map_err(|e| e.to_string())?;
    stream.close().await.map_err(|e| e.to_string())
}

async fn serve_pack(shared: &Shared, peer: PeerId, mut stream: Stream) -> Result<(), String> {
    let request: PackRequest = wire::read_frame(&mut stream, "pack request", wire::MAX_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    let Some(_slot) = shared.limits.transfer(peer) else {
        return refuse(stream, "too many transfers at once from this peer".into()).await;
    };
    let (mut child, mut stdout) = match shared
        .git
        .serve_pack(request.repo, request.wants, request.haves)
        .await
    {
        Ok(c) => c,
        Err(e) => return refuse(stream, e.to_string()).await,
    };
    stream
        .write_all(&[PACK_OK])
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        use tokio::io::AsyncReadExt as _;
        let n = stdout.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        shared.limits.send(peer, n).await;
        stream
            .write_all(&buf[..n])
            .await
            .map_err(|e| e.to_string())?;
    }
    let status = child.wait().await.map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("git pack-objects failed: {status}"));
    }
    stream.close().await.map_err(|e| e.to_string())
}

/// Tells the asker why it gets no pack.
async fn refuse(mut stream: Stream, why: String) -> Result<(), String> {
    let _ = stream.write_all(&[PACK_REFUSED]).await;
    let _ = wire::write_frame(&mut stream, &why).await;
    let _ = stream.close().await;
    Err(why)
}

/// Counts the bytes read through it.
struct Counted<R> {
    inner: R,
    total: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.total.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_multiaddrs_are_found_among_other_entries() {
        let addrs = endpoint_addrs(
            "http://127.0.0.1:8680 /ip4/127.0.0.1/tcp/4001,/ip4/127.0.0.1/udp/4001/quic-v1 /nonsense",
        );
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[0].to_string(), "/ip4/127.0.0.1/tcp/4001");
        let with_peer = format!(
            "/ip4/10.0.0.1/tcp/1/p2p/{}",
            libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id()
        );
        assert_eq!(
            endpoint_addrs(&with_peer)[0].to_string(),
            "/ip4/10.0.0.1/tcp/1"
        );
    }
}
