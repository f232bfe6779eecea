//! Git hosting: one bare repo per RepoToken, served over smart HTTP.
//!
//! * Fetches (protocol v0, v1 and v2) are served by the stock `git upload-pack
//!   --stateless-rpc`: gix has no server side, and git's negotiation and pack reuse
//!   are what clones are measured against.
//! * Pushes are ours: the push certificate is verified (SSH signature, nonce, ACL)
//!   before the pack is read; gix indexes and verifies the pack in a quarantine; the
//!   pack's objects must refer only to objects that exist; non-fast-forwards and
//!   deletions need the repo owner; then, under the repo's push lock, the pack moves
//!   in, the refs move in one compare-and-swap transaction, and the certificate is
//!   recorded with every ref it moved.

pub mod cert;
pub mod pending;
pub mod pktline;
pub mod quorum;
mod receive;
pub mod register;
pub mod replica;
mod repos;
mod serve;
pub mod sshsig;
pub mod token;

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use prometheus_client::metrics::{counter::Counter, family::Family};
use sha2::{Digest, Sha256};
use tokio::io::AsyncBufRead;
use tracing::{debug, info, warn};

pub use serve::router;

use crate::{
    acl::{self, Acl, RepoId, Snapshot},
    config::{GitConfig, Replicate, ReplicateMode},
    keys::{NodeId, NodeKey},
    metrics,
    store::{RefRecord, Store},
    unix_now,
};
use cert::{Command, Nonces, PushCert};
use pending::Pending;
use receive::Report;
use register::{Outcome, Version};
pub use replica::{Refusal, Update};

const TARGET: &str = "hanzo::git";

/// A request body being read.
pub(crate) type BodyReader = Box<dyn AsyncBufRead + Send + Unpin>;
/// Most bytes of a refused push read and discarded so that the client sees the
/// report; beyond it, the connection is closed.
const MAX_DRAIN: u64 = 64 << 20;
/// Largest difference, in seconds, between a push certificate's time and the node's.
const MAX_CLOCK_SKEW: u64 = 600;
/// Packs a repo may have before `git gc --auto` combines them (git's own
/// `gc.autoPackLimit` default).
const MAX_PACKS: usize = 50;

/// Why a git request failed.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The client's fault; the message is shown to it.
    #[error("{0}")]
    Rejected(String),
    /// No such repo on chain.
    #[error("{0}")]
    NotFound(String),
    /// The node's fault; logged, and the client is told to look at the node's log.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The git service: repos on disk, their push records, and the ACL that rules them.
#[derive(Clone)]
pub struct Git {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    acl: Acl,
    store: Arc<Store>,
    nonces: Nonces,
    /// This network's tag, which nonces carry.
    network: String,
    config: GitConfig,
    push_locks: Mutex<HashMap<RepoId, Arc<tokio::sync::Mutex<()>>>>,
    metrics: Metrics,
    /// Which repos this node holds.
    seeding: Replicate,
    node: NodeId,
    /// Repos whose packs are being combined now.
    maintaining: Mutex<HashSet<RepoId>>,
    /// Accepted pushes, for `p2p` to announce.
    announce: tokio::sync::broadcast::Sender<Update>,
    /// The packs of recent pushes, served as they are to peers that want just them.
    pushed: Mutex<HashMap<RepoId, std::collections::VecDeque<replica::PushPack>>>,
    /// The node key, which signs receipts.
    key: NodeKey,
    /// The other replicas, once `p2p` runs: pushes that ask for a quorum go to them.
    witnesses: std::sync::OnceLock<Arc<dyn quorum::Witnesses>>,
}

/// Git hosting's metrics (`hanzo_git_*`).
#[derive(Debug)]
struct Metrics {
    pushes_accepted: Counter,
    /// Refused pushes by reason: `denied` (the client's fault), `not_found` (no
    /// such repo on chain), `internal` (the node's).
    pushes_refused: Family<metrics::Reason, Counter>,
    fetches: Counter,
}

impl Metrics {
    fn new(registry: &metrics::Registry) -> Self {
        let m = Self {
            pushes_accepted: Counter::default(),
            pushes_refused: Family::default(),
            fetches: Counter::default(),
        };
        // Every reason from the start at zero, so rates and alerts see them.
        for reason in ["denied", "not_found", "internal"] {
            m.pushes_refused
                .get_or_create(&metrics::Reason::new(reason))
                .inc_by(0);
        }
        registry.register(
            "hanzo_git_pushes_accepted",
            "Pushes accepted since start",
            m.pushes_accepted.clone(),
        );
        registry.register(
            "hanzo_git_pushes_refused",
            "Pushes refused since start, by reason (denied, not_found, internal)",
            m.pushes_refused.clone(),
        );
        registry.register(
            "hanzo_git_fetches",
            "Fetch requests served since start",
            m.fetches.clone(),
        );
        m
    }
}

impl Git {
    /// The service for repos under `root`, on the network of deployment id
    /// `deployment`. Nonces are keyed by a secret derived from the node key, so they
    /// stay valid across a restart.
    pub fn new(
        root: PathBuf,
        acl: Acl,
        store: Arc<Store>,
        node_key: &NodeKey,
        (config, deployment): (GitConfig, &str),
        seeding: Replicate,
        registry: &metrics::Registry,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"hanzo-node push-cert nonce key\0");
        h.update(node_key.seed().as_slice());
        let network = cert::network_tag(deployment);
        let nonces = Nonces::new(h.finalize().into(), network.clone(), config.nonce_window);
        Self {
            inner: Arc::new(Inner {
                root,
                acl,
                store,
                nonces,
                network,
                config,
                push_locks: Mutex::default(),
                maintaining: Mutex::default(),
                metrics: Metrics::new(registry),
                seeding,
                node: node_key.public(),
                key: NodeKey::from_seed(&node_key.seed()),
                witnesses: std::sync::OnceLock::new(),
                announce: tokio::sync::broadcast::channel(1024).0,
                pushed: Mutex::default(),
            }),
        }
    }

    /// At start: creates the repos this node replicates that have none yet,
    /// reconciles existing ones with their push records (after a crash), drops the
    /// pending updates that expired, and removes repos whose token was burned while
    /// the node was down.
    pub async fn sync_repos(&self, snapshot: &Snapshot) -> Result<(), Error> {
        let this = self.clone();
        let ids: Vec<(RepoId, Option<String>)> = snapshot
            .state
            .repos
            .keys()
            .copied()
            .filter(|id| self.replicates(snapshot, *id))
            .map(|id| (id, default_branch(snapshot, id)))
            .collect();
        let burned: Vec<RepoId> = if snapshot.block.is_some() {
            repos::on_disk(&self.inner.root)
                .into_iter()
                .filter(|id| !snapshot.state.repos.contains_key(id))
                .collect()
        } else {
            Vec::new()
        };
        let held: Vec<RepoId> = ids.iter().map(|(id, _)| *id).collect();
        blocking(move || {
            for id in burned {
                this.remove_repo(id)?;
            }
            for (id, default) in ids {
                let existed = repos::path(&this.inner.root, id).exists();
                let dir = repos::ensure(&this.inner.root, id)?;
                if existed {
                    let records = this.records(id)?;
                    let fixed = repos::reconcile(&dir, &records)?;
                    if fixed > 0 {
                        warn!(target: TARGET, repo = id, fixed, "restored refs to their push records");
                    }
                }
                repos::point_head(&dir, &repos::open(&dir)?, default.as_deref())?;
            }
            Ok(())
        })
        .await?;
        let now = unix_now();
        for id in held {
            self.prune_pending(id, &repos::path(&self.inner.root, id), now)
                .await?;
        }
        Ok(())
    }

    /// Whether this node replicates (and serves) repo `id`, as `p2p.replicate` says.
    pub fn replicates(&self, snapshot: &Snapshot, id: RepoId) -> bool {
        let Some(repo) = snapshot.state.repos.get(&id) else {
            return false;
        };
        match &self.inner.seeding {
            Replicate::Mode(ReplicateMode::All) => true,
            Replicate::Mode(ReplicateMode::Preferred) => snapshot
                .replicators(&repo.name)
                .is_ok_and(|nodes| nodes.contains(&self.inner.node)),
            Replicate::List(names) => names.contains(&repo.name),
        }
    }

    /// Where pushes that ask for a quorum find the other replicas (`p2p` sets it
    /// once, at its start).
    pub fn set_witnesses(&self, witnesses: Arc<dyn quorum::Witnesses>) {
        let _ = self.inner.witnesses.set(witnesses);
    }

    /// Whether `receipt` is a valid receipt for `update` by a replica of its repo
    /// other than this node.
    pub fn check_receipt(&self, update: &Update, receipt: &quorum::Receipt) -> bool {
        let snapshot = self.inner.acl.snapshot();
        let Some(repo) = snapshot.state.repos.get(&update.repo) else {
            return false;
        };
        receipt.node != self.inner.node
            && snapshot
                .replicators(&repo.name)
                .is_ok_and(|nodes| nodes.contains(&receipt.node))
            && receipt.verifies(&self.inner.network, update)
    }

    /// This node's receipt for `update`, which it holds.
    pub fn receipt(&self, update: &Update) -> quorum::Receipt {
        quorum::Receipt::sign(&self.inner.key, &self.inner.network, update, unix_now())
    }

    /// The current ACL.
    pub fn acl_snapshot(&self) -> Arc<Snapshot> {
        self.inner.acl.snapshot()
    }

    /// Updates of pushes accepted here, as they are accepted.
    pub fn accepted(&self) -> tokio::sync::broadcast::Receiver<Update> {
        self.inner.announce.subscribe()
    }

    fn remove_repo(&self, id: RepoId) -> Result<(), Error> {
        repos::remove(&repos::path(&self.inner.root, id))?;
        self.inner
            .store
            .remove_repo(id)
            .map_err(|e| Error::Internal(format!("forget records: {e}")))?;
        info!(target: TARGET, repo = id, "removed repo: its token was burned");
        Ok(())
    }

    /// Counts a fetch served.
    pub(crate) fn count_fetch(&self) {
        self.inner.metrics.fetches.inc();
    }

    /// Creates the repos this node replicates as their tokens appear, removes repos
    /// whose token is burned, and points `HEAD` at a repo's default branch when it
    /// changes on chain, until the ACL's publisher goes away.
    pub async fn follow_acl(self) {
        let mut acl = self.inner.acl.clone();
        // Repos held, with the default branch their `HEAD` follows.
        let mut known: HashMap<RepoId, Option<String>> = HashMap::new();
        while let Ok(snapshot) = acl.changed().await {
            let changed: Vec<(RepoId, Option<String>)> = snapshot
                .state
                .repos
                .keys()
                .filter(|id| self.replicates(&snapshot, **id))
                .map(|id| (*id, default_branch(&snapshot, *id)))
                .filter(|(id, default)| known.get(id) != Some(default))
                .collect();
            let burned: Vec<RepoId> = known
                .keys()
                .filter(|id| !snapshot.state.repos.contains_key(id))
                .copied()
                .collect();
            if changed.is_empty() && burned.is_empty() {
                continue;
            }
            let this = self.clone();
            let removed = burned.clone();
            let mut done = blocking(move || {
                for &id in &removed {
                    this.remove_repo(id)?;
                }
                Ok(())
            })
            .await;
            for (id, default) in &changed {
                if done.is_err() {
                    break;
                }
                // Under the push lock, so that a push's own HEAD update (with the
                // default it read before) cannot come after this one.
                let lock = self.push_lock(*id);
                let _guard = lock.lock().await;
                let (root, id, default) = (self.inner.root.clone(), *id, default.clone());
                done = blocking(move || {
                    let dir = repos::ensure(&root, id)?;
                    repos::point_head(&dir, &repos::open(&dir)?, default.as_deref())
                })
                .await;
            }
            match done {
                Ok(()) => {
                    known.extend(changed);
                    known.retain(|id, _| !burned.contains(id));
                }
                Err(err) => {
                    warn!(target: TARGET, %err, "cannot create, remove or update repos; retrying at the next block")
                }
            }
        }
    }

    /// The recorded refs of repo `id` on this node.
    pub fn ref_views(&self, id: RepoId) -> Result<Vec<RefView>, Error> {
        ref_views(&self.inner.store, id).map_err(|e| Error::Internal(e.to_string()))
    }

    /// Repo `id`'s push records on this node: ref name and record.
    pub fn records(&self, id: RepoId) -> Result<Vec<(String, RefRecord)>, Error> {
        self.inner
            .store
            .refs(id)
            .map_err(|e| Error::Internal(e.to_string()))
    }

    /// The repo named `name`: its token id and directory, created if missing.
    async fn open(&self, snapshot: &Snapshot, name: &str) -> Result<(RepoId, PathBuf), Error> {
        let (id, _) = snapshot
            .repo(name)
            .map_err(|e| Error::NotFound(e.to_string()))?;
        if !self.replicates(snapshot, id) {
            let holders: Vec<String> = snapshot
                .replicators(name)
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            return Err(Error::NotFound(format!(
                "this node does not replicate repo {name} (p2p.replicate); nodes that do: {}",
                holders.join(", ")
            )));
        }
        let root = self.inner.root.clone();
        let dir = blocking(move || repos::ensure(&root, id)).await?;
        Ok((id, dir))
    }

    /// Handles a push to repo `name` (token `id`, directory `dir`) whose head is
    /// already parsed; the pack follows in `body`.
    async fn push(
        &self,
        (name, id, dir): (&str, RepoId, &Path),
        request: &receive::Request,
        body: &mut BodyReader,
    ) -> Report {
        let commands = &request.commands;
        match self.try_push((name, id, dir), request, body).await {
            Ok(report) => {
                // A push held for more signatures moved nothing yet.
                if report.refs.iter().any(|(_, r)| r.is_ok()) {
                    self.inner.metrics.pushes_accepted.inc();
                }
                report
            }
            Err(err) => {
                let kind = match &err {
                    Error::Rejected(_) => "denied",
                    Error::NotFound(_) => "not_found",
                    Error::Internal(_) => "internal",
                };
                self.inner
                    .metrics
                    .pushes_refused
                    .get_or_create(&metrics::Reason::new(kind))
                    .inc();
                let reason = match &err {
                    Error::Rejected(why) | Error::NotFound(why) => why.clone(),
                    Error::Internal(why) => {
                        warn!(target: TARGET, repo = name, %why, "push failed");
                        "internal error; see the node's log".into()
                    }
                };
                info!(target: TARGET, repo = name, %reason, "push refused");
                // Let the client finish sending (discarded, not buffered) so that it
                // reads the report.
                drain(body, MAX_DRAIN).await;
                Report::refused(commands, &reason)
            }
        }
    }

    /// Checks that `cert` was pushed to repo `name` at one of this node's on-chain
    /// git URLs: what every replica checks before applying it ([`Git::plan`]), so
    /// the origin accepts nothing the others would refuse. A node that is no
    /// operator's (it replicates to nobody) checks only the repo.
    fn check_pushee(&self, snapshot: &Snapshot, cert: &PushCert, name: &str) -> Result<(), Error> {
        let base = cert
            .pushee_base(name)
            .map_err(|e| Error::Rejected(e.to_string()))?;
        let Some(endpoint) = snapshot.endpoint_of(&self.inner.node) else {
            return Ok(());
        };
        if acl::git_urls(endpoint).any(|u| u.eq_ignore_ascii_case(base)) {
            return Ok(());
        }
        let mine: Vec<&str> = acl::git_urls(endpoint).collect();
        Err(Error::Rejected(if mine.is_empty() {
            format!(
                "this node's on-chain endpoint {endpoint:?} has no http(s):// URL, so other nodes could not check where pushes went; its operator sets one with `hanzo-node operator set-endpoint \"http://<host>:<port> <multiaddrs>\"`"
            )
        } else {
            format!(
                "pushed to {base}, which is not this node's registered git URL: push to {}/{name}.git",
                mine.join(" or ")
            )
        }))
    }

    async fn try_push(
        &self,
        (name, id, dir): (&str, RepoId, &Path),
        request: &receive::Request,
        body: &mut BodyReader,
    ) -> Result<Report, Error> {
        let max = self.inner.config.max_ref_updates;
        if request.commands.len() > max {
            return Err(Error::Rejected(format!(
                "{} ref updates in one push, more than {max} (git.max_ref_updates)",
                request.commands.len()
            )));
        }
        if let Some(cmd) = request
            .commands
            .iter()
            .find(|c| c.name.starts_with(register::SUPERSEDED_PREFIX))
        {
            return Err(Error::Rejected(format!(
                "{} is kept by the nodes, not pushed: restore a kept tip with `hanzo-node repo restore {name} {}`",
                cmd.name, cmd.name
            )));
        }
        if let Some(cmd) = request
            .commands
            .iter()
            .find(|c| c.name.starts_with(pending::PREFIX))
        {
            return Err(Error::Rejected(format!(
                "{} shows an update waiting for signatures, and is not pushed: sign the update itself by pushing its tip to the ref it updates",
                cmd.name
            )));
        }
        let snapshot = self.inner.acl.snapshot();
        let dir = dir.to_path_buf(); // moved into blocking tasks
        let cert = request.cert.as_ref().ok_or_else(|| {
            Error::Rejected(
                "pushes must be signed: run `git push --signed` with gpg.format=ssh and user.signingkey set to your ed25519 key (or set push.gpgSign=true)".into(),
            )
        })?;
        let key = cert.verify().map_err(|e| Error::Rejected(e.to_string()))?;
        let now = unix_now();
        self.inner
            .nonces
            .check(&cert.nonce, id, now)
            .map_err(|e| Error::Rejected(e.to_string()))?;
        self.check_pushee(&snapshot, cert, name)?;
        // The certificate's time orders competing updates between nodes: it must be
        // about now (the nonce proves the certificate is fresh).
        if cert.timestamp.abs_diff(now) > MAX_CLOCK_SKEW {
            return Err(Error::Rejected(format!(
                "push certificate time {} is {}s off this node's clock (at most {MAX_CLOCK_SKEW}s accepted); check your clock",
                cert.timestamp,
                cert.timestamp.abs_diff(now)
            )));
        }
        // Signatures the same update already has, when a ref rule asks for several.
        let update_key = pending::key(&request.commands);
        let signed = self.signatures(id, &update_key, now)?;
        for cmd in &request.commands {
            match snapshot.may_push(&key, &signed.keys(), name, &cmd.name, false) {
                Ok(_) | Err(acl::Denied::NeedsSignatures(_)) => {}
                Err(e) => return Err(Error::Rejected(e.to_string())),
            }
        }

        let incoming = if request.commands.iter().all(Command::is_delete) {
            let dir = dir.clone();
            blocking(move || repos::Incoming::none(&dir)).await
        } else {
            self.receive_pack(&dir, body).await
        }?;
        let objects = incoming.object_count();

        // Checks that need the objects: they depend on objects only, which only grow.
        let (check_dir, cmds) = (dir.clone(), request.commands.clone());
        let (incoming, rewrites) = blocking(move || {
            let rewrites = incoming.check(&check_dir, &cmds)?;
            Ok((incoming, rewrites))
        })
        .await?;
        // The push itself, under the repo's lock.
        let lock = self.push_lock(id);
        let _guard = lock.lock().await;
        // The ACL and the update's other signatures may have moved while the pack
        // arrived: ask the newest.
        let snapshot = self.inner.acl.snapshot();
        let signed = self.signatures(id, &update_key, now)?;
        let mut pusher = None;
        let mut waiting = Vec::new();
        for (cmd, rewrite) in request.commands.iter().zip(&rewrites) {
            match snapshot.may_push(&key, &signed.keys(), name, &cmd.name, *rewrite) {
                Ok(p) => pusher = Some(p),
                Err(acl::Denied::NeedsSignatures(ruled)) => waiting.push(*ruled),
                Err(e) => return Err(Error::Rejected(e.to_string())),
            }
        }
        if !waiting.is_empty() {
            let signer = snapshot
                .identity_of(&acl::Key::Ssh(key))
                .map(|(i, _)| i)
                .ok_or_else(|| {
                    Error::Rejected(acl::Denied::UnknownKey(key.fingerprint()).to_string())
                })?;
            return self
                .hold(
                    (id, &dir),
                    (cert, signer),
                    signed,
                    (update_key, now),
                    incoming,
                    &waiting,
                )
                .await;
        }
        let Some(pusher) = pusher else {
            return Err(Error::Rejected("no commands".into()));
        };

        // Replicas order a ref's versions by certificate: this one must come after
        // the version it replaces, or other nodes would keep the old tip.
        let hash = cert.hash();
        let version = Version {
            timestamp: cert.timestamp,
            history: 0,
            cert: hash,
        };
        let records: HashMap<String, RefRecord> = self.records(id)?.into_iter().collect();
        // Every tip the client may have been shown (a ref moved since is kept under
        // refs/superseded/): a peer holding them all lacks only this push's pack.
        let before = records
            .values()
            .filter(|r| !r.is_tombstone())
            .map(|r| r.target)
            .collect();
        let (order_dir, cmds) = (dir.clone(), request.commands.clone());
        let (incoming, late) = blocking(move || {
            let view = incoming.view(&order_dir)?;
            let late = cmds.iter().find_map(|cmd| {
                // A command expecting another tip fails the compare-and-swap below
                // ("fetch first"), whatever its order.
                let r = records
                    .get(&cmd.name)
                    .filter(|r| cmd.old.as_bytes() == r.target)?;
                let target = *cmd.new.as_bytes().first_chunk().unwrap_or(&[0; 20]);
                let wins =
                    replica::versions(|id| repos::history(&view, id), Some(r), version, target)
                        .is_some_and(|(c, i)| register::decide(c, i) == Outcome::Wins);
                (!wins).then(|| (cmd.name.clone(), r.timestamp))
            });
            Ok((incoming, late))
        })
        .await?;
        if let Some((name, last)) = late {
            let why = if last == cert.timestamp {
                "replicas order a ref's updates by certificate time in whole seconds, and this rewrite came in the same second as the last update; push again"
            } else {
                "check your clock and push again"
            };
            return Err(Error::Rejected(format!(
                "{name} was last set by a certificate dated {last}, not before this one's {}: {why}",
                cert.timestamp
            )));
        }

        // What a peer that had this node's tips before the push lacks is exactly
        // this pack: remember it, to serve as is.
        let pushed = incoming.pack_name().map(|name| replica::PushPack {
            file: dir.join("objects/pack").join(name),
            tips: request
                .commands
                .iter()
                .filter(|c| !c.is_delete())
                .map(|c| *c.new.as_bytes().first_chunk().unwrap_or(&[0; 20]))
                .collect(),
            before,
        });
        let cosigned = signed.texts();
        let announced = Update::of_push(id, cert, cosigned.clone());
        // A quorum asked: other replicas hold the update before any ref moves.
        let (incoming, receipts) = match self.quorum_for(name, cert)? {
            None => (incoming, Vec::new()),
            Some(q) => {
                let held = self.gather(&dir, incoming, &announced, q).await?;
                let dir = dir.clone();
                (blocking(move || repos::Incoming::none(&dir)).await?, held)
            }
        };
        let apply_dir = dir.clone();
        let edits: Vec<repos::Edit> = request
            .commands
            .iter()
            .map(repos::Edit::from_command)
            .collect();
        let default = default_branch(&snapshot, id);
        blocking(move || repos::apply(&apply_dir, incoming, &edits, default.as_deref())).await?;
        if let Some(pushed) = pushed {
            let mut all = crate::lock(&self.inner.pushed);
            let recent = all.entry(id).or_default();
            if recent.len() >= replica::PUSH_PACKS_KEPT {
                recent.pop_front();
            }
            recent.push_back(pushed);
        }
        let fingerprint = key.fingerprint();
        let updates: Vec<(String, RefRecord)> = request
            .commands
            .iter()
            .map(|c| {
                let record = RefRecord {
                    // A SHA-1 id is 20 bytes; a deletion records the zero id.
                    target: *c.new.as_bytes().first_chunk().unwrap_or(&[0; 20]),
                    cert: hash,
                    identity: pusher.identity,
                    handle: pusher.handle.clone(),
                    key: fingerprint.clone(),
                    timestamp: cert.timestamp,
                };
                (c.name.clone(), record)
            })
            .collect();
        let (store, text) = (self.inner.store.clone(), cert.text.clone());
        let encoded = if receipts.is_empty() {
            Vec::new()
        } else {
            quorum::encode(&receipts)
        };
        let recorded = blocking(move || {
            store
                .record_push(
                    id,
                    (&text, &cosigned, &encoded),
                    &updates,
                    Some(&update_key),
                )
                .map_err(|e| Error::Internal(format!("record push: {e}")))
        })
        .await;
        if let Err(e) = recorded {
            // The refs moved but cannot be justified: put them back.
            let records = self.records(id).unwrap_or_default();
            let _ = blocking(move || repos::reconcile(&dir, &records)).await;
            return Err(e);
        }
        if !signed.certs.is_empty() {
            // The update no longer waits: its tips leave refs/pending/.
            if let Err(e) = self.prune_pending(id, &dir, now).await {
                warn!(target: TARGET, repo = name, %e, "cannot remove the tips of a completed update from refs/pending/");
            }
        }
        // Nobody listening (p2p off) is fine.
        let _ = self.inner.announce.send(announced.clone());
        if !receipts.is_empty()
            && let Some(w) = self.inner.witnesses.get()
        {
            // The replicas that hold it move their refs before the pusher hears ok.
            let nodes = receipts.iter().map(|r| r.node).collect();
            w.commit(announced, nodes, self.inner.config.quorum_timeout)
                .await;
        }
        self.maintain(id, &dir);
        info!(
            target: TARGET,
            repo = name,
            pusher = %pusher.handle,
            key = %fingerprint,
            refs = request.commands.len(),
            objects,
            cert = %hex::encode(hash),
            "push accepted"
        );
        let mut messages = Vec::new();
        if !request.caps.quiet {
            messages.push(format!(
                "hanzo: accepted {} ref update(s), {objects} object(s), signed by {} ({fingerprint})",
                request.commands.len(),
                pusher.handle
            ));
            if !signed.certs.is_empty() {
                messages.push(format!(
                    "hanzo: with the signatures of {} given before",
                    signed.handles(&snapshot).join(", ")
                ));
            }
        }
        if !receipts.is_empty() {
            messages.push(format!(
                "hanzo: held by {} other replica(s) before it moved, each with a signed receipt:",
                receipts.len()
            ));
            for r in &receipts {
                messages.push(format!(
                    "hanzo:   {} {}",
                    r.node,
                    snapshot
                        .endpoint_of(&r.node)
                        .unwrap_or("(no endpoint on chain)")
                ));
            }
        }
        Ok(Report {
            unpack: Ok(()),
            refs: request
                .commands
                .iter()
                .map(|c| (c.name.clone(), Ok(())))
                .collect(),
            messages,
        })
    }

    /// The quorum a push to repo `name` asks for: its certificate's push option, else
    /// the repo's default in `git.quorum`.
    fn quorum_for(&self, name: &str, cert: &PushCert) -> Result<Option<quorum::Quorum>, Error> {
        let asked = quorum::requested(&cert.options).map_err(Error::Rejected)?;
        let default = || {
            self.inner
                .config
                .quorum
                .get(name)
                .filter(|n| **n > 0)
                .map(|n| quorum::Quorum::Count(*n))
        };
        Ok(asked.or_else(default))
    }

    /// Has the other replicas hold `update` (whose objects arrive in `incoming`):
    /// the objects enter the repo (no ref moves), so replicas can fetch them, and
    /// the receipts of `q` replicas are returned. Fewer within `git.quorum_timeout`:
    /// refused, and nothing moves anywhere.
    async fn gather(
        &self,
        dir: &Path,
        incoming: repos::Incoming,
        update: &Update,
        q: quorum::Quorum,
    ) -> Result<Vec<quorum::Receipt>, Error> {
        let witnesses = self.inner.witnesses.get().cloned().ok_or_else(|| {
            Error::Rejected(
                "this node replicates to no one (p2p is off), so no quorum can hold the push; push without -o hanzo.quorum".into(),
            )
        })?;
        let admit_dir = dir.to_path_buf();
        blocking(move || repos::admit(&admit_dir, incoming)).await?;
        let want = match q {
            quorum::Quorum::Count(n) => Some(n),
            quorum::Quorum::All => None,
        };
        let timeout = self.inner.config.quorum_timeout;
        let started = std::time::Instant::now();
        let gathered = witnesses.gather(update.clone(), want, timeout).await;
        let needed = want.unwrap_or(gathered.asked).max(1);
        let got = gathered.receipts.len();
        info!(target: TARGET, repo = update.repo, got, needed, asked = gathered.asked, took = ?started.elapsed(), "quorum gathered");
        if got >= needed {
            return Ok(gathered.receipts);
        }
        let mut why = format!(
            "quorum not reached: {got} of the {needed} other replicas asked for held the push within {} (git.quorum_timeout; {} replicas asked); nothing moved, push again",
            humantime::format_duration(timeout),
            gathered.asked
        );
        for (node, reason) in &gathered.refused {
            why.push_str(&format!("; {node} refused: {reason}"));
        }
        Err(Error::Rejected(why))
    }

    /// The signatures update `key` of repo `id` already has, from its pending
    /// record; none when it has none or it expired.
    fn signatures(&self, id: RepoId, key: &[u8; 32], now: u64) -> Result<Signatures, Error> {
        let store = &self.inner.store;
        let internal = |e: String| Error::Internal(format!("pending update: {e}"));
        let Some((_, value)) = store
            .pending(id)
            .map_err(|e| internal(e.to_string()))?
            .into_iter()
            .find(|(k, _)| k == key)
        else {
            return Ok(Signatures::default());
        };
        let pending = Pending::decode(&value).map_err(internal)?;
        if pending.expired(now, self.inner.config.pending_expiry.as_secs()) {
            return Ok(Signatures::default());
        }
        let mut certs = Vec::with_capacity(pending.certs.len());
        for hash in &pending.certs {
            let text = store
                .cert(hash)
                .map_err(|e| internal(e.to_string()))?
                .ok_or_else(|| internal(format!("certificate {} missing", hex::encode(hash))))?;
            let cert = PushCert::parse(text).map_err(|e| internal(e.to_string()))?;
            let key = cert.verify().map_err(|e| internal(e.to_string()))?;
            certs.push(Signed {
                hash: *hash,
                key,
                text: cert.text,
            });
        }
        Ok(Signatures {
            pending: Some(pending),
            certs,
        })
    }

    /// Keeps a push whose update needs more signatures (`waiting` says which refs and
    /// whose): its objects enter the repo, each new tip shows under `refs/pending/`,
    /// and its certificate joins the update's pending record. No ref moves; the pusher
    /// is told who must still sign, and how.
    async fn hold(
        &self,
        (id, dir): (RepoId, &Path),
        (cert, signer): (&PushCert, acl::IdentityId),
        signed: Signatures,
        (update_key, now): ([u8; 32], u64),
        incoming: repos::Incoming,
        waiting: &[acl::Ruled],
    ) -> Result<Report, Error> {
        let tips: Vec<(String, Option<gix::ObjectId>)> = cert
            .commands
            .iter()
            .filter(|c| !c.is_delete())
            .map(|c| (pending::tip_ref(&c.name, c.new), Some(c.new)))
            .collect();
        let (tip_dir, shown) = (dir.to_path_buf(), tips.clone());
        blocking(move || {
            repos::admit(&tip_dir, incoming)?;
            repos::force_refs(&repos::open(&tip_dir)?, &shown)
        })
        .await?;
        let snapshot = self.inner.acl.snapshot();
        let since = signed.pending.as_ref().map_or(now, |p| p.since);
        let record = signed
            .pending
            .clone()
            .unwrap_or(Pending {
                certs: Vec::new(),
                since,
            })
            .sign(cert.hash(), signer, |h| signed.identity_of(h, &snapshot));
        let (store, value, text) = (self.inner.store.clone(), record.encode(), cert.text.clone());
        blocking(move || {
            store
                .put_pending(id, &update_key, &value, &text)
                .map_err(|e| Error::Internal(format!("record pending update: {e}")))
        })
        .await?;
        if let Err(e) = self.prune_pending(id, dir, now).await {
            warn!(target: TARGET, repo = id, %e, "cannot drop expired pending updates");
        }
        let until = std::time::UNIX_EPOCH
            + std::time::Duration::from_secs(since)
            + self.inner.config.pending_expiry;
        let mut messages = Vec::new();
        for r in waiting {
            info!(target: TARGET, repo = %r.repo, reference = %r.reference, signed = %r.signed, have = r.have, need = r.threshold, "update waits for signatures");
            messages.push(format!(
                "hanzo: {} waits for signatures: {} of {} ({}); still to sign: {} (ref rule {})",
                r.reference, r.have, r.threshold, r.signed, r.missing, r.pattern
            ));
        }
        messages.push(
            "hanzo: to sign, another signer reviews the update and pushes the same one:".into(),
        );
        let url = cert.pushee.trim_end_matches('/');
        for (tip, _) in &tips {
            messages.push(format!("hanzo:   git fetch {url} {tip}"));
        }
        let refspecs: Vec<String> = cert
            .commands
            .iter()
            .map(|c| {
                if c.is_delete() {
                    format!(":{}", c.name)
                } else {
                    format!("{}:{}", c.new, c.name)
                }
            })
            .collect();
        messages.push(format!(
            "hanzo:   git push --signed {url} {}",
            refspecs.join(" ")
        ));
        messages.push(format!(
            "hanzo: it waits until {} (git.pending_expiry)",
            humantime::format_rfc3339_seconds(until)
        ));
        let refs = cert
            .commands
            .iter()
            .map(|c| {
                let why = waiting.iter().find(|r| r.reference == c.name).map_or_else(
                    || "pending with the rest of this push".to_owned(),
                    |r| format!("pending: {} of {} signatures", r.have, r.threshold),
                );
                (c.name.clone(), Err(why))
            })
            .collect();
        Ok(Report {
            unpack: Ok(()),
            refs,
            messages,
        })
    }

    /// Drops repo `id`'s pending updates that expired at `now`, and removes the
    /// `refs/pending/` tips of updates that no longer wait. The caller holds the
    /// repo's push lock (or nothing else runs yet).
    async fn prune_pending(&self, id: RepoId, dir: &Path, now: u64) -> Result<(), Error> {
        let store = self.inner.store.clone();
        let expiry = self.inner.config.pending_expiry.as_secs();
        let dir = dir.to_path_buf();
        blocking(move || {
            let internal = |e: String| Error::Internal(format!("pending updates: {e}"));
            let mut live = HashSet::new();
            for (key, value) in store.pending(id).map_err(|e| internal(e.to_string()))? {
                let p = Pending::decode(&value).map_err(internal)?;
                if p.expired(now, expiry) {
                    store
                        .remove_pending(id, &key)
                        .map_err(|e| internal(e.to_string()))?;
                    info!(target: TARGET, repo = id, "a pending update expired (git.pending_expiry)");
                    continue;
                }
                // Every certificate of an update has the same commands: one tells
                // the tips it shows.
                let text = p.certs.first().and_then(|h| store.cert(h).ok().flatten());
                if let Some(cert) = text.and_then(|t| PushCert::parse(t).ok()) {
                    live.extend(
                        cert.commands
                            .iter()
                            .filter(|c| !c.is_delete())
                            .map(|c| pending::tip_ref(&c.name, c.new)),
                    );
                }
            }
            let stale: Vec<(String, Option<gix::ObjectId>)> = repos::refs(&dir)?
                .into_iter()
                .filter(|(n, _)| n.starts_with(pending::PREFIX) && !live.contains(n))
                .map(|(n, _)| (n, None))
                .collect();
            repos::force_refs(&repos::open(&dir)?, &stale)
        })
        .await
    }

    async fn receive_pack(
        &self,
        dir: &Path,
        body: &mut BodyReader,
    ) -> Result<repos::Incoming, Error> {
        let limits = repos::PackLimits {
            max_bytes: self.inner.config.max_pack_bytes,
            max_objects: self.inner.config.max_objects,
        };
        let dir = dir.to_owned();
        // The body moves to the blocking pool and back.
        let owned = std::mem::replace(body, Box::new(tokio::io::empty()));
        let (result, owned) = tokio::task::spawn_blocking(move || {
            let mut sync = tokio_util::io::SyncIoBridge::new(owned);
            let result = repos::receive(&dir, &mut sync, limits);
            (result, sync.into_inner())
        })
        .await
        .map_err(|e| Error::Internal(format!("pack task: {e}")))?;
        *body = owned;
        result
    }

    fn push_lock(&self, id: RepoId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .inner
            .push_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(id).or_default().clone()
    }
}

/// A signature an update already has: its certificate's hash, key and text.
struct Signed {
    hash: [u8; 32],
    key: crate::keys::SshKey,
    text: Vec<u8>,
}

/// The signatures a pending update has so far, with its record.
#[derive(Default)]
struct Signatures {
    pending: Option<Pending>,
    certs: Vec<Signed>,
}

impl Signatures {
    fn keys(&self) -> Vec<crate::keys::SshKey> {
        self.certs.iter().map(|c| c.key).collect()
    }

    fn texts(&self) -> Vec<Vec<u8>> {
        self.certs.iter().map(|c| c.text.clone()).collect()
    }

    /// The identity that signed certificate `hash`, as of `snapshot`.
    fn identity_of(&self, hash: &[u8; 32], snapshot: &Snapshot) -> Option<acl::IdentityId> {
        let signed = self.certs.iter().find(|c| c.hash == *hash)?;
        snapshot
            .identity_of(&acl::Key::Ssh(signed.key))
            .map(|(id, _)| id)
    }

    /// Who signed, by handle (a key no identity holds by its fingerprint).
    fn handles(&self, snapshot: &Snapshot) -> Vec<String> {
        self.certs
            .iter()
            .map(|c| {
                snapshot
                    .identity_of(&acl::Key::Ssh(c.key))
                    .map_or_else(|| c.key.fingerprint(), |(_, i)| i.handle.clone())
            })
            .collect()
    }
}

/// Reads and discards up to `limit` bytes of `body`./// Reads and discards up to `limit` bytes of `body`.
async fn drain(body: &mut BodyReader, limit: u64) {
    use tokio::io::AsyncReadExt;
    let _ = tokio::io::copy(&mut body.take(limit), &mut tokio::io::sink()).await;
}

impl Git {
    /// Every push and replicated update adds a pack; past [`MAX_PACKS`] of them, `git
    /// gc --auto` combines them in the background (at most one run per repo), as stock
    /// git's receive-pack does. It is safe beside pushes and fetches: new packs are
    /// written before old ones go, and unreachable objects are kept for two weeks, so a
    /// pack admitted just before its ref moves is never lost. Without this, packs pile
    /// up, and with them the node's memory and every fetch's cost.
    fn maintain(&self, id: RepoId, dir: &std::path::Path) {
        let packs = std::fs::read_dir(dir.join("objects/pack")).map_or(0, |d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "pack"))
                .count()
        });
        if packs <= MAX_PACKS || !crate::lock(&self.inner.maintaining).insert(id) {
            return;
        }
        let (this, dir) = (self.clone(), dir.to_path_buf());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let out = tokio::process::Command::new("git")
                .args(["-c", "gc.autoDetach=false", "-c", "gc.packRefs=false"])
                .args(["-c", &format!("gc.autoPackLimit={MAX_PACKS}")])
                .args(["gc", "--auto", "--quiet"])
                .current_dir(&dir)
                .kill_on_drop(true)
                .output()
                .await;
            match out {
                Ok(o) if o.status.success() => debug!(
                    target: TARGET,
                    repo = id,
                    packs,
                    took = ?started.elapsed(),
                    "packs combined"
                ),
                Ok(o) => warn!(
                    target: TARGET,
                    repo = id,
                    "git gc failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => warn!(target: TARGET, repo = id, %e, "cannot run git gc"),
            }
            crate::lock(&this.inner.maintaining).remove(&id);
        });
    }
}

/// Repo `id`'s default branch on chain, if it names one.
fn default_branch(snapshot: &Snapshot, id: RepoId) -> Option<String> {
    snapshot.state.repos.get(&id)?.default_branch.clone()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

/// A ref of a repo as `hanzo-node repo refs` shows it.
#[derive(Debug, serde::Serialize)]
pub struct RefView {
    /// Full ref name.
    #[serde(rename = "ref")]
    pub name: String,
    /// Tip.
    pub target: String,
    /// Pushing identity's token id.
    pub identity: u64,
    /// Its handle.
    pub handle: String,
    /// Signing key fingerprint.
    pub key: String,
    /// SHA-256 of the push certificate.
    pub cert: String,
    /// Certificate time (unix seconds).
    pub timestamp: u64,
    /// SHA-256 of the certificates of the update's other signers (a ref rule asked
    /// several).
    pub cosigned: Vec<String>,
    /// The receipts of the replicas that held the push before it moved (it asked for
    /// a quorum).
    pub receipts: Vec<ReceiptView>,
}

/// A replica's receipt as `hanzo-node repo refs` shows it.
#[derive(Debug, serde::Serialize)]
pub struct ReceiptView {
    /// The replica's node key.
    pub node: String,
    /// When it stored the push (unix seconds).
    pub time: u64,
    /// Its ed25519 signature (hex) of the receipt message (`git::quorum`).
    pub signature: String,
}

/// The recorded refs of repo `id`.
pub fn ref_views(store: &Store, id: RepoId) -> Result<Vec<RefView>, crate::store::Error> {
    store
        .refs(id)?
        .into_iter()
        .filter(|(_, r)| !r.is_tombstone())
        .map(|(name, r)| {
            let cosigned = store
                .cosigned(&r.cert)?
                .iter()
                .map(|text| hex::encode(Sha256::digest(text)))
                .collect();
            let receipts = match store.receipts(&r.cert)? {
                Some(bytes) => quorum::decode(&bytes)
                    .map_err(|detail| crate::store::Error::Corrupt {
                        what: "receipts",
                        detail,
                    })?
                    .into_iter()
                    .map(|x| ReceiptView {
                        node: x.node.to_string(),
                        time: x.time,
                        signature: hex::encode(x.signature),
                    })
                    .collect(),
                None => Vec::new(),
            };
            Ok(RefView {
                name,
                target: hex::encode(r.target),
                identity: r.identity,
                handle: r.handle,
                key: r.key,
                cert: hex::encode(r.cert),
                timestamp: r.timestamp,
                cosigned,
                receipts,
            })
        })
        .collect()
}
