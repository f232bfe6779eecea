//! Replicas: applying updates that other nodes accepted, and serving them the objects
//! they miss. Transport is `p2p`'s business; what is checked and how refs move is
//! decided here.
//!
//! An [`Update`] is one push certificate and the refs it justifies. A replica
//! verifies the certificate and the pusher's rights against its own ACL ([`Git::plan`]),
//! fetches whatever objects it lacks (through `p2p`, into a quarantine:
//! [`Git::receive_replica`]), then checks the objects and moves the refs in one
//! compare-and-swap as the register decides ([`Git::commit`]).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::Stdio,
};

use gix::ObjectId;
use sha2::{Digest, Sha256};
use tokio::process::Child;
use tracing::{debug, info};

pub use super::repos::Incoming;
use super::{
    BodyReader, Error, Git, TARGET, blocking,
    cert::{self, Command, PushCert},
    register::{self, Outcome, Version},
    repos::{self, Edit},
};
use crate::{
    acl::{RepoId, Snapshot},
    keys::SshKey,
    store::RefRecord,
    unix_now,
};

/// Seconds a replicated certificate may be dated after this node's clock.
pub const MAX_FUTURE: u64 = 300;
/// Largest certificate a replica accepts, in bytes.
pub const MAX_CERT_BYTES: usize = 128 << 10;

/// Most certificates of other signers an update carries (a ref rule names at most 32
/// signers).
pub const MAX_COSIGNED: usize = 31;

/// Pushes per repo whose packs are remembered for serving as they are.
pub const PUSH_PACKS_KEPT: usize = 4;

/// The pack a push brought: what a peer that had the origin's tips (kept ones
/// included) before the push lacks to have the push.
#[derive(Debug)]
pub struct PushPack {
    /// The pack file in the repo.
    pub file: PathBuf,
    /// The tips the push set.
    pub tips: HashSet<[u8; 20]>,
    /// The tips before it, kept ones included.
    pub before: HashSet<[u8; 20]>,
}

/// A pack for a peer: a pushed pack read from its file, or `git pack-objects`.
pub struct Served {
    /// The pack's bytes.
    pub reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    /// The `git pack-objects` writing them, if any.
    child: Option<Child>,
}

impl Served {
    /// Whether the pack is a push's, read as it arrived.
    pub fn is_push_pack(&self) -> bool {
        self.child.is_none()
    }

    /// Waits for `git pack-objects` to finish, if it ran; an error if it failed.
    pub async fn finish(self) -> Result<(), Error> {
        let Some(mut child) = self.child else {
            return Ok(());
        };
        let status = child
            .wait()
            .await
            .map_err(|e| Error::Internal(format!("git pack-objects: {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "git pack-objects failed: {status}"
            )))
        }
    }
}

/// One push certificate and the refs it justifies, as replicas exchange it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Update {
    /// The repo's token id.
    pub repo: RepoId,
    /// The certificate's text, signature included.
    pub cert: Vec<u8>,
    /// The refs it sets.
    pub claims: Vec<Claim>,
    /// The certificates of the other signers of the same update, when a ref rule
    /// asked for several signatures; `cert` is the one that completed it.
    pub cosigned: Vec<Vec<u8>>,
}

/// A ref and the tip a certificate gives it (all zeros: deleted). The ref is one the
/// certificate moves, or a `refs/superseded/…` ref keeping a tip it set.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claim {
    /// Full ref name.
    pub name: String,
    /// The tip.
    pub target: [u8; 20],
}

/// Why an update was not applied, as gossip validation needs to know it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Refusal {
    /// The update is invalid: whoever sent it is at fault.
    #[error("{0}")]
    Invalid(String),
    /// The update cannot be used here now (unknown repo, not replicated, objects
    /// unavailable, a local failure): nobody is at fault.
    #[error("{0}")]
    Unusable(String),
    /// The objects received for it fail verification: whoever sent them is at fault.
    #[error("{0}")]
    BadObjects(String),
    /// The pusher may not make this update as of this node's ACL. No proof against
    /// whoever relayed it: the origin's ACL may be ahead of this one (a right just
    /// granted) or behind (a right revoked since the push).
    #[error("{0}")]
    NotAllowed(String),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        match e {
            Error::Rejected(why) => Refusal::Invalid(why),
            Error::NotFound(why) | Error::Internal(why) => Refusal::Unusable(why),
        }
    }
}

/// A verified update and what this replica needs to apply it.
#[derive(Debug)]
pub struct Plan {
    /// The repo's token id.
    pub repo: RepoId,
    dir: PathBuf,
    cert: PushCert,
    hash: [u8; 32],
    key: SshKey,
    /// The other certificates that signed the same update, with their keys.
    cosigned: Vec<(Vec<u8>, SshKey)>,
    /// Claims with the command each derives from.
    claims: Vec<(Claim, Command)>,
    /// Objects to fetch (tips this replica lacks).
    pub wants: Vec<[u8; 20]>,
    /// Tips this replica has: a peer sends only what they lack.
    pub haves: Vec<[u8; 20]>,
}

/// What [`Git::commit`] changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Refs moved (superseded refs included).
    pub refs: usize,
    /// Objects received.
    pub objects: usize,
}

fn oid(bytes: [u8; 20]) -> ObjectId {
    ObjectId::Sha1(bytes)
}

fn bytes(id: ObjectId) -> [u8; 20] {
    *id.as_bytes().first_chunk().unwrap_or(&[0; 20])
}

impl Update {
    /// SHA-256 of its certificate: with the repo, how replicas name the update.
    pub fn cert_hash(&self) -> [u8; 32] {
        Sha256::digest(&self.cert).into()
    }

    /// The update a just-accepted push announces: every ref its certificate moved,
    /// with the certificates of the update's other signers.
    pub fn of_push(repo: RepoId, cert: &PushCert, cosigned: Vec<Vec<u8>>) -> Self {
        Self {
            repo,
            cosigned,
            cert: cert.text.clone(),
            claims: cert
                .commands
                .iter()
                .map(|c| Claim {
                    name: c.name.clone(),
                    target: bytes(c.new),
                })
                .collect(),
        }
    }
}

impl Git {
    /// Checks that `cert` was pushed to repo `repo` (named `name`) on this network:
    /// its nonce names the repo and the network, and its `pushee` is the repo at an
    /// operator's on-chain git URL. A certificate signed for another repo or another
    /// network can then not be replayed here, whoever relays it.
    fn check_bound(
        &self,
        snapshot: &Snapshot,
        cert: &PushCert,
        repo: RepoId,
        name: &str,
    ) -> Result<(), cert::Error> {
        cert::NonceInfo::parse(&cert.nonce)?.check_bound(&cert.nonce, &self.inner.network, repo)?;
        let base = cert.pushee_base(name)?;
        if snapshot.is_operator_url(base) {
            Ok(())
        } else {
            Err(cert::Error::UnknownEndpoint(base.to_owned()))
        }
    }

    /// Parses and verifies certificate `text` of a replicated update to repo `repo`
    /// (id, name): its signature, its binding to the repo and this network, and a
    /// date not ahead of `now` by more than [`MAX_FUTURE`].
    fn check_cert(
        &self,
        snapshot: &Snapshot,
        text: Vec<u8>,
        (repo, name): (RepoId, &str),
        now: u64,
    ) -> Result<(PushCert, SshKey), cert::Error> {
        if text.len() > MAX_CERT_BYTES {
            return Err(cert::Error::Malformed(format!(
                "certificate of {} bytes, more than {MAX_CERT_BYTES}",
                text.len()
            )));
        }
        let cert = PushCert::parse(text)?;
        let key = cert.verify()?;
        self.check_bound(snapshot, &cert, repo, name)?;
        if cert.timestamp > now + MAX_FUTURE {
            return Err(cert::Error::Malformed(format!(
                "certificate dated {}s in the future (at most {MAX_FUTURE}s accepted)",
                cert.timestamp - now
            )));
        }
        Ok((cert, key))
    }

    /// Verifies `update` against this node's ACL and clock and works out what it
    /// would change; `None` when this replica already has all of it.
    pub async fn plan(&self, update: Update) -> Result<Option<Plan>, Refusal> {
        let snapshot = self.inner.acl.snapshot();
        let Some(repo) = snapshot.state.repos.get(&update.repo) else {
            return Err(Refusal::Unusable(format!(
                "repo {} is not on chain (as of this node's ACL)",
                update.repo
            )));
        };
        if !self.replicates(&snapshot, update.repo) {
            return Err(Refusal::Unusable(format!(
                "repo {} is not replicated here (p2p.replicate)",
                repo.name
            )));
        }
        if update.cosigned.len() > MAX_COSIGNED {
            return Err(Refusal::Invalid(format!(
                "{} other signers' certificates, more than {MAX_COSIGNED}",
                update.cosigned.len()
            )));
        }
        let now = unix_now();
        let (cert, key) = self
            .check_cert(&snapshot, update.cert, (update.repo, &repo.name), now)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        // Each other signer signed exactly the same update, for this repo on this
        // network; the ACL counts which of them the ref rule names.
        let commands = |c: &PushCert| {
            let mut lines: Vec<String> = c
                .commands
                .iter()
                .map(|c| format!("{} {} {}", c.old, c.new, c.name))
                .collect();
            lines.sort_unstable();
            lines
        };
        let mut cosigned = Vec::with_capacity(update.cosigned.len());
        for text in update.cosigned {
            let (other, other_key) = self
                .check_cert(&snapshot, text, (update.repo, &repo.name), now)
                .map_err(|e| Refusal::Invalid(format!("another signer's certificate: {e}")))?;
            if commands(&other) != commands(&cert) {
                return Err(Refusal::Invalid(
                    "another signer's certificate signs a different update".into(),
                ));
            }
            cosigned.push((other.text, other_key));
        }
        let cosigners: Vec<SshKey> = cosigned.iter().map(|(_, k)| *k).collect();
        let hash = cert.hash();
        let mut claims = Vec::with_capacity(update.claims.len());
        for claim in update.claims {
            let reference =
                register::superseded_of(&claim.name, &hash).unwrap_or_else(|| claim.name.clone());
            let Some(cmd) = cert
                .commands
                .iter()
                .find(|c| c.name == reference && bytes(c.new) == claim.target)
            else {
                return Err(Refusal::Invalid(format!(
                    "the certificate does not set {} to {}",
                    claim.name,
                    hex::encode(claim.target)
                )));
            };
            if cmd.is_delete() && claim.name != reference {
                return Err(Refusal::Invalid(format!("{} keeps a deletion", claim.name)));
            }
            snapshot
                .may_push(&key, &cosigners, &repo.name, &reference, false)
                .map_err(|e| Refusal::NotAllowed(e.to_string()))?;
            claims.push((claim, cmd.clone()));
        }

        let root = self.inner.root.clone();
        let records: HashMap<String, RefRecord> = self.records(update.repo)?.into_iter().collect();
        let id = update.repo;
        blocking(move || {
            let dir = repos::ensure(&root, id)?;
            let repo = repos::open(&dir)?;
            let version = Version {
                timestamp: cert.timestamp,
                history: 0,
                cert: hash,
            };
            let mut wants = Vec::new();
            let mut useful = Vec::new();
            for (claim, cmd) in claims {
                let current = records.get(&claim.name);
                let target = oid(claim.target);
                // Without the objects, a tie in one second cannot be decided yet:
                // fetch them.
                let outcome = versions(
                    |id| repos::history(&repo, id),
                    current,
                    version,
                    claim.target,
                )
                .map_or(Outcome::Wins, |(c, i)| register::decide(c, i));
                let needed = match outcome {
                    Outcome::Have => false,
                    Outcome::Wins => true,
                    // A losing tip matters only if the winner does not contain it.
                    Outcome::Loses => {
                        !cmd.is_delete()
                            && current.is_some_and(|c| {
                                c.is_tombstone() || !repos::contains(&repo, oid(c.target), target)
                            })
                    }
                };
                if !needed {
                    continue;
                }
                if !cmd.is_delete() && !repo.has_object(target) {
                    wants.push(claim.target);
                }
                useful.push((claim, cmd));
            }
            if useful.is_empty() {
                return Ok(None);
            }
            wants.sort_unstable();
            wants.dedup();
            let mut haves: Vec<[u8; 20]> = records
                .values()
                .filter(|r| !r.is_tombstone() && repo.has_object(oid(r.target)))
                .map(|r| r.target)
                .collect();
            haves.sort_unstable();
            haves.dedup();
            Ok(Some(Plan {
                repo: id,
                dir,
                cert,
                hash,
                key,
                cosigned,
                claims: useful,
                wants,
                haves,
            }))
        })
        .await
        .map_err(Refusal::from)
    }

    /// Reads the pack a peer sent for `plan` into a quarantine (bounded like a push).
    pub async fn receive_replica(
        &self,
        plan: &Plan,
        mut body: BodyReader,
    ) -> Result<Incoming, Error> {
        self.receive_pack(&plan.dir, &mut body).await
    }

    /// Checks the objects of `plan` (received in `incoming`, or all present) and
    /// applies it under the repo's push lock, as the register decides against the
    /// records as they are then.
    pub async fn commit(&self, plan: Plan, incoming: Option<Incoming>) -> Result<Applied, Refusal> {
        let dir = plan.dir.clone();
        let (incoming, rewrites) = self.checked(&plan, incoming).await?;
        let objects = incoming.object_count();
        let lock = self.push_lock(plan.repo);
        let _guard = lock.lock().await;
        let snapshot = self.inner.acl.snapshot();
        let (name, pusher) = permitted(&snapshot, &plan, &rewrites)?;
        let Some(pusher) = pusher else {
            return Ok(Applied::default());
        };
        let records: HashMap<String, RefRecord> = self.records(plan.repo)?.into_iter().collect();
        let version = Version {
            timestamp: plan.cert.timestamp,
            history: 0,
            cert: plan.hash,
        };
        let (identity, handle, key, timestamp) = (
            pusher.identity,
            pusher.handle.clone(),
            plan.key.fingerprint(),
            plan.cert.timestamp,
        );
        let record = move |target: [u8; 20]| RefRecord {
            target,
            cert: version.cert,
            identity,
            handle: handle.clone(),
            key: key.clone(),
            timestamp,
        };
        let claims = plan.claims;
        let (apply_dir, hash) = (dir.clone(), plan.hash);
        let default = super::default_branch(&snapshot, plan.repo);
        let updates = blocking(move || {
            repos::admit(&apply_dir, incoming)?;
            let repo = repos::open(&apply_dir)?;
            let mut edits = Vec::new();
            let mut updates = Vec::new();
            // A ref keeping a tip: created once, never moved.
            let keep = |name: String,
                        rec: RefRecord,
                        edits: &mut Vec<Edit>,
                        updates: &mut Vec<(String, RefRecord)>| {
                if records.contains_key(&name) || updates.iter().any(|(n, _)| *n == name) {
                    return;
                }
                edits.push(Edit {
                    name: name.clone(),
                    expected: None,
                    new: Some(oid(rec.target)),
                });
                updates.push((name, rec));
            };
            for (claim, _) in &claims {
                let current = records.get(&claim.name);
                let target = oid(claim.target);
                let (cur, inc) = versions(
                    |id| repos::history(&repo, id),
                    current,
                    version,
                    claim.target,
                )
                .ok_or_else(|| Error::Internal(format!("history of {} incomplete", claim.name)))?;
                match register::decide(cur, inc) {
                    Outcome::Have => {}
                    Outcome::Wins => {
                        if let Some(old) = current.filter(|c| !c.is_tombstone())
                            && (claim.target == [0; 20]
                                || !repos::contains(&repo, target, oid(old.target)))
                            && !claim.name.starts_with(register::SUPERSEDED_PREFIX)
                        {
                            keep(
                                register::superseded_name(&claim.name, &old.cert),
                                old.clone(),
                                &mut edits,
                                &mut updates,
                            );
                        }
                        let actual = repos::current(&repo, &claim.name)?;
                        edits.push(Edit {
                            name: claim.name.clone(),
                            expected: actual,
                            new: (claim.target != [0; 20]).then_some(target),
                        });
                        updates.push((claim.name.clone(), record(claim.target)));
                    }
                    Outcome::Loses => {
                        if let Some(tip) = current
                            && claim.target != [0; 20]
                            && (tip.is_tombstone()
                                || !repos::contains(&repo, oid(tip.target), target))
                        {
                            keep(
                                register::superseded_name(&claim.name, &hash),
                                record(claim.target),
                                &mut edits,
                                &mut updates,
                            );
                        }
                    }
                }
            }
            // Deleting an absent ref is no change to git, only to the records.
            edits.retain(|e| e.expected.is_some() || e.new.is_some());
            repos::set_refs(&apply_dir, &repo, &edits, default.as_deref())?;
            Ok(updates)
        })
        .await
        .map_err(Refusal::from)?;
        if updates.is_empty() {
            return Ok(Applied { refs: 0, objects });
        }
        let (store, text) = (self.inner.store.clone(), plan.cert.text.clone());
        let cosigned: Vec<Vec<u8>> = plan.cosigned.into_iter().map(|(t, _)| t).collect();
        let to_record = updates.clone();
        let recorded = blocking(move || {
            store
                .record_push(plan.repo, (&text, &cosigned, &[]), &to_record, None)
                .map_err(|e| Error::Internal(format!("record update: {e}")))
        })
        .await;
        if let Err(e) = recorded {
            let records = self.records(plan.repo).unwrap_or_default();
            let _ = blocking(move || repos::reconcile(&dir, &records)).await;
            return Err(e.into());
        }
        info!(
            target: TARGET,
            repo = %name,
            refs = updates.len(),
            objects,
            pusher = %pusher.handle,
            cert = %hex::encode(plan.hash),
            "replicated update applied"
        );
        self.maintain(plan.repo, &dir);
        Ok(Applied {
            refs: updates.len(),
            objects,
        })
    }

    /// Checks the objects of `plan` (received in `incoming`, or all present): every
    /// object refers only to objects that exist and every tip is present. Returns
    /// them with which commands rewrite history (they need the repo's owner).
    async fn checked(
        &self,
        plan: &Plan,
        incoming: Option<Incoming>,
    ) -> Result<(Incoming, Vec<bool>), Refusal> {
        let received = incoming.is_some();
        let incoming = match incoming {
            Some(i) => i,
            None => {
                let dir = plan.dir.clone();
                blocking(move || Incoming::none(&dir)).await?
            }
        };
        let commands: Vec<Command> = plan.claims.iter().map(|(_, c)| c.clone()).collect();
        let check_dir = plan.dir.clone();
        blocking(move || {
            let rewrites = incoming.check(&check_dir, &commands)?;
            Ok((incoming, rewrites))
        })
        .await
        .map_err(|e| match e {
            Error::Rejected(why) if received => Refusal::BadObjects(why),
            e => e.into(),
        })
    }

    /// Holds `plan`'s update for an origin gathering a quorum: checks its objects
    /// (received in `incoming`, or all present) and the signers' rights, moves the
    /// objects into the repo and stores the certificates, moving no ref. From then
    /// on this node can serve it (and signs a receipt saying so: [`Git::receipt`]).
    pub async fn hold_replica(
        &self,
        plan: Plan,
        incoming: Option<Incoming>,
    ) -> Result<(), Refusal> {
        // No push lock: no ref moves, and a node gathering its own quorum for this
        // repo holds that lock while it waits for others (which may be waiting for
        // this answer).
        let (incoming, rewrites) = self.checked(&plan, incoming).await?;
        permitted(&self.inner.acl.snapshot(), &plan, &rewrites)?;
        let (dir, store) = (plan.dir.clone(), self.inner.store.clone());
        let mut certs = vec![plan.cert.text];
        certs.extend(plan.cosigned.into_iter().map(|(t, _)| t));
        blocking(move || {
            repos::admit(&dir, incoming)?;
            for cert in &certs {
                store
                    .put_cert(cert)
                    .map_err(|e| Error::Internal(format!("store certificate: {e}")))?;
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    /// The pack for a peer that wants `wants` and has `haves` of repo `repo`. When
    /// they are a recent push's tips and the peer had everything this node had
    /// before it, the push's own pack, read from its file; else `git pack-objects`
    /// makes a thin pack. Only objects this node has are asked for; a want it lacks
    /// is an error.
    pub async fn serve_pack(
        &self,
        repo: RepoId,
        wants: Vec<[u8; 20]>,
        haves: Vec<[u8; 20]>,
    ) -> Result<Served, Error> {
        let snapshot = self.inner.acl.snapshot();
        if !snapshot.state.repos.contains_key(&repo) || !self.replicates(&snapshot, repo) {
            return Err(Error::NotFound(format!(
                "repo {repo} is not replicated here"
            )));
        }
        let file = {
            let has: HashSet<[u8; 20]> = haves.iter().copied().collect();
            let pushed = crate::lock(&self.inner.pushed);
            pushed.get(&repo).and_then(|recent| {
                recent
                    .iter()
                    .rev()
                    .find(|p| wants.iter().all(|w| p.tips.contains(w)) && p.before.is_subset(&has))
                    .map(|p| p.file.clone())
            })
        };
        // Combined into another pack since: make one.
        if let Some(file) = file
            && let Ok(f) = tokio::fs::File::open(&file).await
        {
            debug!(target: TARGET, repo, pack = %file.display(), "serving a push's pack to a peer");
            return Ok(Served {
                reader: Box::new(f),
                child: None,
            });
        }
        let dir = super::repos::path(&self.inner.root, repo);
        let check_dir = dir.clone();
        let input = blocking(move || {
            let r = repos::open(&check_dir)?;
            let mut input = String::new();
            for w in &wants {
                if !r.has_object(oid(*w)) {
                    return Err(Error::NotFound(format!("no object {}", hex::encode(w))));
                }
                input.push_str(&format!("{}\n", hex::encode(w)));
            }
            for h in haves.iter().filter(|h| r.has_object(oid(**h))) {
                input.push_str(&format!("^{}\n", hex::encode(h)));
            }
            Ok(input)
        })
        .await?;
        let mut child = tokio::process::Command::new("git")
            .args([
                "pack-objects",
                "--stdout",
                "--revs",
                "--thin",
                "--delta-base-offset",
                "-q",
            ])
            .current_dir(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::Internal(format!("start git pack-objects: {e}")))?;
        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| Error::Internal("pack-objects stdin".into()))?;
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(input.as_bytes()).await;
        });
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Internal("pack-objects stdout".into()))?;
        debug!(target: TARGET, repo, "serving a pack to a peer");
        Ok(Served {
            reader: Box::new(stdout),
            child: Some(child),
        })
    }

    /// A digest of repo `repo`'s records (tombstones and superseded refs included):
    /// two replicas with equal digests hold the same refs under the same certificates.
    pub fn digest(&self, repo: RepoId) -> Result<[u8; 32], Error> {
        let mut h = Sha256::new();
        for (name, r) in self.records(repo)? {
            h.update(name.as_bytes());
            h.update([0]);
            h.update(r.target);
            h.update(r.cert);
        }
        Ok(h.finalize().into())
    }

    /// Repo `repo`'s records as updates, one per certificate: what a peer whose
    /// digest differs is sent.
    pub fn updates(&self, repo: RepoId) -> Result<Vec<Update>, Error> {
        let mut by_cert: HashMap<[u8; 32], Vec<Claim>> = HashMap::new();
        for (name, r) in self.records(repo)? {
            by_cert.entry(r.cert).or_default().push(Claim {
                name,
                target: r.target,
            });
        }
        let mut out = Vec::with_capacity(by_cert.len());
        for (hash, claims) in by_cert {
            let cert = self
                .inner
                .store
                .cert(&hash)
                .map_err(|e| Error::Internal(e.to_string()))?
                .ok_or_else(|| {
                    Error::Internal(format!("certificate {} missing", hex::encode(hash)))
                })?;
            let cosigned = self
                .inner
                .store
                .cosigned(&hash)
                .map_err(|e| Error::Internal(e.to_string()))?;
            out.push(Update {
                repo,
                cert,
                claims,
                cosigned,
            });
        }
        Ok(out)
    }
}

/// Whether `plan`'s signers may make its updates (`rewrites` says which rewrite
/// history) as of `snapshot`: the repo's name, and the pusher (`None`: no claims).
fn permitted(
    snapshot: &Snapshot,
    plan: &Plan,
    rewrites: &[bool],
) -> Result<(String, Option<crate::acl::Pusher>), Refusal> {
    let name = snapshot
        .state
        .repos
        .get(&plan.repo)
        .map(|r| r.name.clone())
        .ok_or_else(|| Refusal::Unusable(format!("repo {} was burned", plan.repo)))?;
    let cosigners: Vec<SshKey> = plan.cosigned.iter().map(|(_, k)| *k).collect();
    let mut pusher = None;
    for ((_, cmd), rewrite) in plan.claims.iter().zip(rewrites) {
        pusher = Some(
            snapshot
                .may_push(&plan.key, &cosigners, &name, &cmd.name, *rewrite)
                .map_err(|e| Refusal::NotAllowed(e.to_string()))?,
        );
    }
    Ok((name, pusher))
}

/// Where record `r` stands in the register's order (history left 0).
fn version_of(r: &RefRecord) -> Version {
    Version {
        timestamp: r.timestamp,
        history: 0,
        cert: r.cert,
    }
}

/// The versions of the `current` record and of an incoming certificate's version
/// setting `target`, with their histories counted (by `history`) when the two are of
/// the same second. `None` when an object needed for that is missing.
pub(super) fn versions(
    history: impl Fn(ObjectId) -> Option<u64>,
    current: Option<&RefRecord>,
    mut incoming: Version,
    target: [u8; 20],
) -> Option<(Option<Version>, Version)> {
    let Some(c) = current else {
        return Some((None, incoming));
    };
    let mut version = version_of(c);
    if version.timestamp == incoming.timestamp {
        let count = |t: [u8; 20]| {
            if t == [0; 20] {
                Some(0)
            } else {
                history(oid(t))
            }
        };
        version.history = count(c.target)?;
        incoming.history = count(target)?;
    }
    Some((Some(version), incoming))
}
