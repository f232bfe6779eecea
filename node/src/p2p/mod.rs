//! Replication among staked operators' nodes over libp2p.
//!
//! One task owns the swarm (TCP and QUIC, noise, yamux, identify, ping, Kademlia,
//! gossipsub, and raw streams for packs and catch-up); the rest of the node talks to
//! it through [`P2p`]. Only active operators' node keys may connect ([`gate`]).
//!
//! * An accepted push is published on its repo's topic as a [`wire::RefUpdate`].
//! * What to do with a received update — whom to fetch it from, when to give up on a
//!   peer, whom to penalize, when to ask for catch-up — is decided by the sans-I/O
//!   [`replicator::Replicator`]; the driver here only performs its commands.
//! * Performing a fetch: the certificate, its binding to the repo and network, and
//!   the pusher's rights are checked against this node's ACL (`git::Git::plan`),
//!   the missing objects fetched over `/hanzo/pack/1` from one peer, then checked
//!   and applied (`git::Git::commit`). Only then is the gossip message accepted, and
//!   gossipsub forwards it: a node announces what it can serve. Invalid updates are
//!   rejected (the sender is penalized); updates this node cannot use are ignored.
//! * Catch-up: on every new connection and every `p2p.sync_interval`, a node sends
//!   each peer its digest per repo on `/hanzo/sync/2`; the peer answers with its
//!   records for the repos that differ, which go through the same core.
//! * Every stream read and write has a deadline (`p2p.stream_timeout`); a fetch as
//!   a whole has `p2p.fetch_deadline`.

mod gate;
mod limits;
pub mod replicator;
#[cfg(test)]
mod sim;
pub mod wire;
mod witness;

use std::{
    collections::{HashMap, HashSet},
    future::Future as _,
    pin::Pin,
    sync::Arc,
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
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncRead, ReadBuf},
    sync::{mpsc, watch},
};
use tokio_util::{compat::FuturesAsyncReadCompatExt, sync::CancellationToken};
use tracing::{debug, info, warn};

use crate::{
    acl::{Acl, Snapshot},
    config::P2pConfig,
    git::{Git, Refusal, Update},
    keys::NodeKey,
    metrics::{self, Reason},
    tasks::Tasks,
};
use limits::Limits;
use replicator::{Attempt, Command, Key, Offer, Outcome, Replicator, Verdict, Via};
use wire::{PackRequest, RefUpdate, SyncRequest, SyncResponse};

const TARGET: &str = "hanzo::p2p";
const PACK_PROTOCOL: StreamProtocol = StreamProtocol::new("/hanzo/pack/1");
/// 2: updates carry the certificates of an update's other signers.
const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/hanzo/sync/2");
/// Updates being verified, fetched and applied at once.
const MAX_REPLICATIONS: usize = 16;
/// How often the core's clock advances.
const TICK: Duration = Duration::from_millis(250);
/// gossipsub's default publish threshold: peers scored below it get no gossip.
const PUBLISH_THRESHOLD: f64 = -50.0;
/// How long a peer banned for repeated offenses stays banned.
const BAN: Duration = Duration::from_secs(600);
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

/// The label of updates applied by path.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct Path {
    via: String,
}

/// Replication metrics (`hanzo_p2p_*`).
struct Metrics {
    updates: Family<Reason, Counter>,
    applied: Family<Path, Counter>,
    penalties: Family<Reason, Counter>,
    joined: Counter,
    fetch_failures: Family<Reason, Counter>,
    served: Family<Reason, Counter>,
    bytes_fetched: Counter,
    latency: Histogram,
    peers: Gauge,
    denied: Counter,
    score_min: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    fn new(registry: &metrics::Registry) -> Self {
        let m = Self {
            updates: Family::default(),
            applied: Family::default(),
            penalties: Family::default(),
            joined: Counter::default(),
            fetch_failures: Family::default(),
            served: Family::default(),
            bytes_fetched: Counter::default(),
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.005, 2.0, 14,
            )),
            peers: Gauge::default(),
            denied: Counter::default(),
            score_min: Default::default(),
        };
        // The known outcomes, offenses and failures from the start at zero, so rates
        // and alerts see them before the first one happens.
        for (family, reasons) in [
            (&m.updates, &["applied", "have", "invalid", "unusable"][..]),
            (&m.penalties, &["invalid_update", "bad_pack", "stalled"]),
            (
                &m.fetch_failures,
                &["deadline", "stream", "refused", "invalid_pack"],
            ),
        ] {
            for r in reasons {
                family.get_or_create(&Reason::new(r)).inc_by(0);
            }
        }
        m.register(registry);
        m
    }

    fn register(&self, registry: &metrics::Registry) {
        registry.register(
            "hanzo_p2p_updates",
            "Replicated ref updates by outcome (applied, have, invalid, unusable)",
            self.updates.clone(),
        );
        registry.register(
            "hanzo_p2p_applied",
            "Replicated updates applied, by the path that brought them (gossip, catchup)",
            self.applied.clone(),
        );
        registry.register(
            "hanzo_p2p_penalties",
            "Penalties given to peers, by offense (invalid_update, bad_pack, stalled)",
            self.penalties.clone(),
        );
        registry.register(
            "hanzo_p2p_offers_joined",
            "Offers of an update already fetched or being fetched, answered without a second fetch",
            self.joined.clone(),
        );
        registry.register(
            "hanzo_p2p_fetch_failures",
            "Pack fetches from peers that failed, by reason",
            self.fetch_failures.clone(),
        );
        registry.register(
            "hanzo_p2p_packs_served",
            "Packs served to peers: a push's own pack (push_pack) or made by git pack-objects",
            self.served.clone(),
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
            "hanzo_p2p_gossip_score_min",
            "Lowest gossipsub score among connected peers (below -50 a peer is not published to, below -80 its messages are ignored)",
            self.score_min.clone(),
        );
        registry.register(
            "hanzo_p2p_peers_denied",
            "Connections refused since start: the peer is no active operator's node",
            self.denied.clone(),
        );
    }

    fn count(&self, family: &Family<Reason, Counter>, reason: &str) {
        family.get_or_create(&Reason::new(reason)).inc();
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
    commands: mpsc::Sender<Cmd>,
}

impl P2p {
    /// Builds the swarm, listens, and spawns the task that drives it (a critical one)
    /// until the node stops; what the driver starts goes through `tasks` too.
    pub fn start(
        key: &NodeKey,
        config: P2pConfig,
        acl: Acl,
        git: Git,
        (tasks, registry): (&Tasks, &metrics::Registry),
    ) -> Result<Self, Error> {
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
        let metrics = Arc::new(Metrics::new(registry));
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
                        banned: HashSet::new(),
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
            max_message,
            stream_timeout: config.stream_timeout,
            tasks: tasks.clone(),
        });
        shared.git.set_witnesses(Arc::new(witness::Witnessing {
            shared: Arc::downgrade(&shared),
            node: key.public(),
        }));
        let (reports_tx, reports_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            swarm,
            acl,
            shared,
            core: Replicator::new(replicator::Config {
                max_jobs: MAX_REPLICATIONS,
                fetch_deadline: config.fetch_deadline,
                sync_interval: config.sync_interval,
                ban: BAN,
            }),
            epoch: Instant::now(),
            fetches: HashMap::new(),
            reports: reports_tx,
            bootstrap,
            sync_interval: config.sync_interval,
            listen: listen_tx,
            peers: peers_tx,
            connected: HashSet::new(),
            low_score: HashSet::new(),
        };
        let cancel = tasks.cancel().child_token();
        tasks.spawn_critical("p2p", async move {
            driver.run(cmd_rx, reports_rx, cancel).await;
            Ok(())
        });
        info!(target: TARGET, %peer_id, "p2p started");
        Ok(Self {
            peer_id,
            listen: listen_rx,
            peers: peers_rx,
            commands: cmd_tx,
        })
    }

    /// The addresses the swarm listens on, each ending in `/p2p/<peer id>`, once it
    /// listens on at least one.
    pub async fn listen_addrs(&self) -> Vec<Multiaddr> {
        let mut rx = self.listen.clone();
        let addrs = rx.wait_for(|a| !a.is_empty()).await.map(|a| a.clone());
        let me = Protocol::P2p(self.peer_id);
        addrs
            .unwrap_or_default()
            .into_iter()
            .map(|a| a.with(me.clone()))
            .collect()
    }

    /// The addresses the swarm listens on as they change (without `/p2p/`).
    pub fn listening(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.listen.clone()
    }

    /// The peers connected now.
    pub fn peers(&self) -> Vec<PeerId> {
        self.peers.borrow().clone()
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
    max_message: usize,
    /// Deadline of every stream read and write.
    stream_timeout: Duration,
    /// Where the fetches, catch-ups and served streams are spawned.
    tasks: Tasks,
}

/// What tasks the driver spawned report back.
enum Report {
    /// A fetch ended.
    Attempted(Key, PeerId, Attempt),
    /// A peer answered a catch-up request.
    Synced(PeerId, Vec<Update>),
}

struct Driver {
    swarm: Swarm<Behaviour>,
    acl: Acl,
    shared: Arc<Shared>,
    core: Replicator<PeerId, MessageId>,
    /// The origin of the core's clock.
    epoch: Instant,
    /// Fetches in flight, to abort when the core abandons them.
    fetches: HashMap<Key, tokio::task::AbortHandle>,
    reports: mpsc::UnboundedSender<Report>,
    bootstrap: Vec<Multiaddr>,
    sync_interval: Duration,
    listen: watch::Sender<Vec<Multiaddr>>,
    peers: watch::Sender<Vec<PeerId>>,
    connected: HashSet<PeerId>,
    /// Peers whose gossip score is below the publish threshold.
    low_score: HashSet<PeerId>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Cmd>,
        mut reports: mpsc::UnboundedReceiver<Report>,
        cancel: CancellationToken,
    ) {
        let mut accepted = self.shared.git.accepted();
        let mut acl = self.acl.clone();
        self.refresh(&acl.snapshot());
        for addr in self.bootstrap.clone() {
            let _ = self.swarm.dial(addr);
        }
        let mut control = self.shared.control.clone();
        let mut serving = tokio::task::JoinSet::new();
        for (protocol, which) in [
            (PACK_PROTOCOL, Inbound::Pack),
            (SYNC_PROTOCOL, Inbound::Sync),
            (witness::PROTOCOL, Inbound::Witness),
        ] {
            match control.accept(protocol) {
                Ok(incoming) => {
                    serving.spawn(serve(self.shared.clone(), incoming, which));
                }
                Err(e) => warn!(target: TARGET, %e, "cannot accept streams"),
            }
        }
        let mut dial = tokio::time::interval(self.sync_interval);
        dial.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(report) = reports.recv() => {
                    let now = self.now();
                    match report {
                        Report::Attempted(key, peer, attempt) => {
                            self.fetches.remove(&key);
                            self.core.attempted(now, key, peer, attempt);
                        }
                        Report::Synced(peer, updates) => {
                            for update in updates {
                                let hash = update.cert_hash();
                                self.core.offered(now, Offer {
                                    update,
                                    hash,
                                    from: peer,
                                    author: None,
                                    via: Via::Catchup,
                                    message: None,
                                    announced_ms: 0,
                                });
                            }
                        }
                    }
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
                    let now = self.now();
                    self.core.tick(now);
                    self.watch_scores();
                }
                _ = dial.tick() => {
                    self.dial_operators();
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
            self.perform();
        }
        for (_, fetch) in self.fetches.drain() {
            fetch.abort();
        }
        serving.abort_all();
    }

    /// Publishes the lowest gossipsub score among connected peers, and logs a peer
    /// whose score would cost it gossip.
    fn watch_scores(&mut self) {
        let gossip = &self.swarm.behaviour().gossipsub;
        let mut min = 0.0f64;
        for peer in &self.connected {
            let Some(score) = gossip.peer_score(peer) else {
                continue;
            };
            min = min.min(score);
            let low = score < PUBLISH_THRESHOLD;
            if low && self.low_score.insert(*peer) {
                warn!(target: TARGET, %peer, score, "peer's gossip score fell below the publish threshold: gossip to and from it is cut");
            } else if !low && self.low_score.remove(peer) {
                info!(target: TARGET, %peer, score, "peer's gossip score recovered");
            }
        }
        self.shared.metrics.score_min.set(min);
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Performs what the core decided.
    fn perform(&mut self) {
        let commands: Vec<_> = self.core.drain().collect();
        let metrics = self.shared.metrics.clone();
        for command in commands {
            match command {
                Command::Fetch { key, peer, update } => {
                    let shared = self.shared.clone();
                    let reports = self.reports.clone();
                    let task = self.shared.tasks.spawn(async move {
                        let attempt = attempt(&shared, update, peer).await;
                        let _ = reports.send(Report::Attempted(key, peer, attempt));
                    });
                    self.fetches.insert(key, task.abort_handle());
                }
                Command::Abandon { key } => {
                    if let Some(fetch) = self.fetches.remove(&key) {
                        fetch.abort();
                    }
                    metrics.count(&metrics.fetch_failures, "deadline");
                }
                Command::Report {
                    message: id,
                    from,
                    verdict,
                } => {
                    let acceptance = match verdict {
                        Verdict::Accept => MessageAcceptance::Accept,
                        Verdict::Reject => MessageAcceptance::Reject,
                        Verdict::Ignore => MessageAcceptance::Ignore,
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(&id, &from, acceptance);
                }
                Command::Penalize { peer, offense } => {
                    metrics.count(&metrics.penalties, offense.label());
                    info!(target: TARGET, %peer, offense = offense.label(), "peer penalized");
                }
                Command::Ban { peer } => {
                    warn!(target: TARGET, %peer, "peer banned for repeated offenses; disconnecting");
                    self.swarm.behaviour_mut().gate.banned.insert(peer);
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                Command::Unban { peer } => {
                    info!(target: TARGET, %peer, "ban lifted");
                    self.swarm.behaviour_mut().gate.banned.remove(&peer);
                }
                Command::Announce { update } => self.reannounce(update),
                Command::Sync { peer } => {
                    let shared = self.shared.clone();
                    let reports = self.reports.clone();
                    self.shared.tasks.spawn(async move {
                        match catch_up(&shared, peer).await {
                            Ok(updates) if !updates.is_empty() => {
                                let _ = reports.send(Report::Synced(peer, updates));
                            }
                            Ok(_) => {}
                            Err(why) => debug!(target: TARGET, %peer, %why, "catch-up failed"),
                        }
                    });
                }
                Command::Finished {
                    key,
                    via,
                    outcome,
                    announced_ms,
                } => {
                    let label = match &outcome {
                        Outcome::Applied => "applied",
                        Outcome::Have => "have",
                        Outcome::Invalid(why) => {
                            warn!(target: TARGET, repo = key.0, cert = %hex::encode(key.1), %why, "rejected update");
                            "invalid"
                        }
                        Outcome::Unusable(why) => {
                            debug!(target: TARGET, repo = key.0, cert = %hex::encode(key.1), %why, "update not applied");
                            "unusable"
                        }
                    };
                    metrics.count(&metrics.updates, label);
                    if outcome == Outcome::Applied {
                        metrics
                            .applied
                            .get_or_create(&Path {
                                via: via.label().into(),
                            })
                            .inc();
                        if via == Via::Catchup {
                            info!(target: TARGET, repo = key.0, cert = %hex::encode(key.1), "update applied by catch-up, not gossip");
                        }
                        if announced_ms > 0 {
                            let ms = unix_ms().saturating_sub(announced_ms);
                            #[allow(clippy::cast_precision_loss)] // milliseconds
                            metrics.latency.observe(ms as f64 / 1000.0);
                        }
                    }
                }
            }
        }
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
                // gossipsub's own scores with its default weights; invalid updates
                // are penalized, and their senders banned, by the replicator, which
                // also sees catch-up and packs. (A heavier gossipsub weight here
                // graylisted a forger after two updates, before the replicator had
                // counted its offenses.)
                if gossip.subscribe(&t).unwrap_or(false) {
                    let _ = gossip.set_topic_params(t, gossipsub::TopicScoreParams::default());
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

    /// Announces a push this node accepted: every ref its certificate moved.
    fn announce(&mut self, update: Update) {
        self.core.have((update.repo, update.cert_hash()));
        let Ok(cert) = crate::git::cert::PushCert::parse(update.cert.clone()) else {
            return;
        };
        let b = |id: gix::ObjectId| *id.as_bytes().first_chunk().unwrap_or(&[0; 20]);
        self.publish(RefUpdate {
            repo: update.repo,
            refs: cert
                .commands
                .iter()
                .map(|c| (c.name.clone(), b(c.old), b(c.new)))
                .collect(),
            cert: update.cert,
            announced_ms: unix_ms(),
            cosigned: update.cosigned,
        });
    }

    /// Announces an update applied by catch-up, in the same bytes on every node
    /// (refs sorted, no time), so gossipsub delivers one message however many nodes
    /// announce it.
    fn reannounce(&mut self, update: Update) {
        let mut refs: Vec<_> = update
            .claims
            .into_iter()
            .map(|c| (c.name, [0; 20], c.target))
            .collect();
        refs.sort_unstable();
        self.publish(RefUpdate {
            repo: update.repo,
            refs,
            cert: update.cert,
            announced_ms: 0,
            cosigned: update.cosigned,
        });
    }

    fn publish(&mut self, message: RefUpdate) {
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic(message.repo), message.encode())
        {
            Ok(_) => debug!(target: TARGET, repo = message.repo, "announced update"),
            // No peer yet, or announced already: catch-up carries it.
            Err(e) => debug!(target: TARGET, %e, repo = message.repo, "update not announced"),
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(target: TARGET, %address, "listening");
                self.listen.send_modify(|a| a.push(address));
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
                    self.core.connected(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if self.connected.remove(&peer_id) => {
                debug!(target: TARGET, peer = %peer_id, "peer disconnected");
                self.core.disconnected(peer_id);
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
            })) => self.on_message(propagation_source, message_id, message),
            _ => {}
        }
    }

    fn publish_peers(&mut self) {
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        #[allow(clippy::cast_possible_wrap)] // a peer count
        self.shared.metrics.peers.set(peers.len() as i64);
        self.peers.send_replace(peers);
    }

    fn on_message(&mut self, from: PeerId, id: MessageId, message: gossipsub::Message) {
        let metrics = self.shared.metrics.clone();
        let verdict = |driver: &mut Self, acceptance, outcome: &str| {
            metrics.count(&metrics.updates, outcome);
            let _ = driver
                .swarm
                .behaviour_mut()
                .gossipsub
                .report_message_validation_result(&id, &from, acceptance);
        };
        // Gossip reaches only operators, but the author may be anyone who signed.
        let author_ok = message
            .source
            .is_some_and(|s| self.swarm.behaviour().gate.allowed.contains(&s));
        if !author_ok {
            debug!(target: TARGET, peer = %from, source = ?message.source, "update authored by no active operator");
            return verdict(self, MessageAcceptance::Reject, "invalid");
        }
        if !self.shared.limits.message(from) {
            return verdict(self, MessageAcceptance::Ignore, "rate_limited");
        }
        let update = match RefUpdate::decode(&message.data, self.shared.max_message) {
            Ok(u) => u,
            Err(e) => {
                debug!(target: TARGET, peer = %from, %e, "undecodable update");
                return verdict(self, MessageAcceptance::Reject, "invalid");
            }
        };
        let announced_ms = update.announced_ms;
        let update = update.into_update();
        let hash = update.cert_hash();
        let before = self.core.pending();
        let now = self.now();
        self.core.offered(
            now,
            Offer {
                update,
                hash,
                from,
                author: message.source,
                via: Via::Gossip,
                message: Some(id),
                announced_ms,
            },
        );
        if self.core.pending() == before {
            self.shared.metrics.joined.inc();
        }
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

/// Verifies `update`, fetches what this node lacks from `peer`, and applies it.
async fn attempt(shared: &Shared, update: Update, peer: PeerId) -> Attempt {
    let plan = match shared.git.plan(update).await {
        Ok(Some(plan)) => plan,
        Ok(None) => return Attempt::Have,
        Err(refusal) => return refused(refusal),
    };
    let incoming = if plan.wants.is_empty() {
        None
    } else {
        let started = Instant::now();
        match fetch(shared, peer, &plan).await {
            Ok(incoming) => {
                debug!(target: TARGET, %peer, fetched = ?started.elapsed(), "fetched");
                Some(incoming)
            }
            Err(failure) => {
                shared
                    .metrics
                    .count(&shared.metrics.fetch_failures, failure.label());
                debug!(target: TARGET, %peer, why = %failure, "fetch failed");
                return match failure {
                    Failure::BadPack(why) => Attempt::BadPack(why),
                    other => Attempt::Failed(other.to_string()),
                };
            }
        }
    };
    match shared.git.commit(plan, incoming).await {
        Ok(applied) if applied.refs > 0 => Attempt::Applied,
        Ok(_) => Attempt::Have,
        Err(refusal) => refused(refusal),
    }
}

fn refused(refusal: Refusal) -> Attempt {
    match refusal {
        Refusal::Invalid(why) => Attempt::Invalid(why),
        Refusal::Unusable(why) => Attempt::Unusable(why),
        // Not forwarded, and nobody penalized: the ACLs may just differ for now.
        Refusal::NotAllowed(why) => {
            Attempt::Unusable(format!("not allowed as of this node's ACL: {why}"))
        }
        Refusal::BadObjects(why) => Attempt::BadPack(why),
    }
}

/// Why a fetch from a peer failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The stream failed, stalled past its deadline, or could not be opened.
    #[error("stream: {0}")]
    Stream(String),
    /// The peer refused.
    #[error("refused: {0}")]
    Refused(String),
    /// The pack it sent is not valid.
    #[error("invalid pack: {0}")]
    BadPack(String),
}

impl Failure {
    fn label(&self) -> &'static str {
        match self {
            Failure::Stream(_) => "stream",
            Failure::Refused(_) => "refused",
            Failure::BadPack(_) => "invalid_pack",
        }
    }
}

/// `io` within `deadline`, or a timeout error naming `what`.
async fn within<T, E: std::fmt::Display>(
    deadline: Duration,
    what: &str,
    io: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(deadline, io).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "{what}: nothing for {} (p2p.stream_timeout)",
            humantime::format_duration(deadline)
        )),
    }
}

/// Fetches the objects `plan` wants from `peer` into a quarantine.
async fn fetch(
    shared: &Shared,
    peer: PeerId,
    plan: &crate::git::replica::Plan,
) -> Result<crate::git::replica::Incoming, Failure> {
    let deadline = shared.stream_timeout;
    let request = PackRequest {
        repo: plan.repo,
        wants: plan.wants.clone(),
        haves: plan.haves.clone(),
    };
    let (mut stream, status) = retry_dropped(|| async {
        let mut stream = open(shared, peer, PACK_PROTOCOL, &request).await?;
        let mut status = [0u8; 1];
        within(deadline, "read status", stream.read_exact(&mut status)).await?;
        Ok((stream, status))
    })
    .await
    .map_err(Failure::Stream)?;
    if status[0] != PACK_OK {
        let why: String = within(
            deadline,
            "read refusal",
            wire::read_frame(&mut stream, "refusal", 4096),
        )
        .await
        .unwrap_or_else(|e| e);
        return Err(Failure::Refused(why));
    }
    let counted = Counted {
        inner: stream.compat(),
        total: shared.metrics.bytes_fetched.clone(),
        idle: deadline,
        timer: Box::pin(tokio::time::sleep(deadline)),
        failed: Arc::new(std::sync::Mutex::new(None)),
    };
    let failed = counted.failed.clone();
    let body: crate::git::BodyReader =
        Box::new(tokio::io::BufReader::with_capacity(64 << 10, counted));
    let result = shared.git.receive_replica(plan, body).await;
    result.map_err(|e| {
        // A stream that failed is the transport's fault; a pack that arrived whole
        // and does not index is the peer's.
        match failed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            Some(why) => Failure::Stream(why),
            None => Failure::BadPack(e.to_string()),
        }
    })
}

/// Opens a `protocol` stream to `peer` and sends `request` on it.
async fn open<T: serde::Serialize>(
    shared: &Shared,
    peer: PeerId,
    protocol: StreamProtocol,
    request: &T,
) -> Result<Stream, String> {
    let deadline = shared.stream_timeout;
    let mut control = shared.control.clone();
    let mut stream = within(deadline, "open stream", control.open_stream(peer, protocol)).await?;
    within(
        deadline,
        "send request",
        wire::write_frame(&mut stream, request),
    )
    .await?;
    Ok(stream)
}

/// Runs `exchange` (open a stream, send a request, read the start of the answer)
/// again when it fails before any answer: libp2p-stream drops an inbound stream
/// while the peer's acceptor still holds the previous one (its channel has room for
/// one), which is what happens when two nodes ask the same peer at once, as they do
/// right after an announcement. Up to four tries, 10, 20 and 40 ms apart, while
/// each fails within a second.
async fn retry_dropped<T, F: std::future::Future<Output = Result<T, String>>>(
    mut exchange: impl FnMut() -> F,
) -> Result<T, String> {
    let mut wait = Duration::from_millis(10);
    for _ in 0..3 {
        let started = Instant::now();
        match exchange().await {
            Ok(v) => return Ok(v),
            // A dropped stream fails at once; one that took its time did not.
            Err(why) if started.elapsed() > Duration::from_secs(1) => return Err(why),
            Err(why) => {
                debug!(target: TARGET, %why, ?wait, "stream dropped before an answer; asking again");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    exchange().await
}

/// Sends `peer` this node's digests on the sync protocol and returns the updates it
/// answers with.
async fn catch_up(shared: &Shared, peer: PeerId) -> Result<Vec<Update>, String> {
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
        return Ok(Vec::new());
    }
    let deadline = shared.stream_timeout;
    let request = SyncRequest { repos };
    let response: SyncResponse = retry_dropped(|| async {
        let mut stream = open(shared, peer, SYNC_PROTOCOL, &request).await?;
        within(
            deadline,
            "read sync response",
            wire::read_frame(&mut stream, "sync response", wire::MAX_SYNC_RESPONSE),
        )
        .await
    })
    .await?;
    // Only what this node does not hold already (the peer sends all its records of
    // each repo that differs) becomes a job.
    let mut records: HashMap<u64, HashMap<String, [u8; 32]>> = HashMap::new();
    let mut news = Vec::new();
    for update in response.updates {
        let held = records.entry(update.repo).or_insert_with(|| {
            shared
                .git
                .records(update.repo)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, r)| (name, r.cert))
                .collect()
        });
        let hash = update.cert_hash();
        if !update
            .claims
            .iter()
            .all(|c| held.get(&c.name) == Some(&hash))
        {
            news.push(update);
        }
    }
    Ok(news)
}

/// The protocols peers open streams on.
#[derive(Debug, Clone, Copy)]
enum Inbound {
    Pack,
    Sync,
    Witness,
}

/// Serves inbound streams of one protocol.
async fn serve(shared: Arc<Shared>, mut incoming: libp2p_stream::IncomingStreams, which: Inbound) {
    while let Some((peer, stream)) = incoming.next().await {
        let shared = shared.clone();
        shared.tasks.clone().spawn(async move {
            let result = match which {
                Inbound::Pack => serve_pack(&shared, peer, stream).await,
                Inbound::Sync => serve_sync(&shared, stream).await,
                Inbound::Witness => witness::serve(&shared, peer, stream).await,
            };
            if let Err(why) = result {
                debug!(target: TARGET, %peer, %why, ?which, "serving a peer failed");
            }
        });
    }
}

async fn serve_sync(shared: &Shared, mut stream: Stream) -> Result<(), String> {
    let deadline = shared.stream_timeout;
    let request: SyncRequest = within(
        deadline,
        "read sync request",
        wire::read_frame(&mut stream, "sync request", wire::MAX_REQUEST),
    )
    .await?;
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
    within(
        deadline,
        "send sync response",
        wire::write_frame(&mut stream, &SyncResponse { updates }),
    )
    .await?;
    within(deadline, "close", stream.close()).await
}

async fn serve_pack(shared: &Shared, peer: PeerId, mut stream: Stream) -> Result<(), String> {
    let deadline = shared.stream_timeout;
    let request: PackRequest = within(
        deadline,
        "read pack request",
        wire::read_frame(&mut stream, "pack request", wire::MAX_REQUEST),
    )
    .await?;
    let Some(_slot) = shared.limits.transfer(peer) else {
        return refuse(
            shared,
            stream,
            "too many transfers at once from this peer".into(),
        )
        .await;
    };
    let mut served = match shared
        .git
        .serve_pack(request.repo, request.wants, request.haves)
        .await
    {
        Ok(s) => s,
        Err(e) => return refuse(shared, stream, e.to_string()).await,
    };
    let source = if served.is_push_pack() {
        "push_pack"
    } else {
        "pack_objects"
    };
    shared.metrics.count(&shared.metrics.served, source);
    within(deadline, "send status", stream.write_all(&[PACK_OK])).await?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        use tokio::io::AsyncReadExt as _;
        let n = served
            .reader
            .read(&mut buf)
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        shared.limits.send(peer, n).await;
        within(deadline, "send pack", stream.write_all(&buf[..n])).await?;
    }
    served.finish().await.map_err(|e| e.to_string())?;
    within(deadline, "close", stream.close()).await
}

/// Tells the asker why it gets no pack.
async fn refuse(shared: &Shared, mut stream: Stream, why: String) -> Result<(), String> {
    let _ = tokio::time::timeout(shared.stream_timeout, async {
        let _ = stream.write_all(&[PACK_REFUSED]).await;
        let _ = wire::write_frame(&mut stream, &why).await;
        let _ = stream.close().await;
    })
    .await;
    Err(why)
}

/// Counts the bytes read through it as they arrive, and fails a read that gets nothing for `idle`
/// (remembering why in `failed`).
struct Counted<R> {
    inner: R,
    /// Counts as bytes arrive (`hanzo_p2p_bytes_fetched`).
    total: Counter,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    failed: Arc<std::sync::Mutex<Option<String>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counted<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.total.inc_by(n as u64);
                let next = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                *this
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
                Poll::Ready(Err(e))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let why = format!(
                        "the peer sent nothing for {} mid-pack (p2p.stream_timeout)",
                        humantime::format_duration(this.idle)
                    );
                    *this
                        .failed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why.clone());
                    Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
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
