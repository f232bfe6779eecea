//! The replication core: what to fetch from whom, when to retry, when to give up,
//! whom to penalize and when to ask for catch-up. No I/O and no clock of its own:
//! the driver (or the simulator) feeds it events with the time and performs the
//! [`Command`]s it returns.
//!
//! * An update is known by its repo and certificate hash ([`Key`]). However often it
//!   is offered (gossip from several peers, catch-up), a node runs one job for it:
//!   later offers join the job in flight, and their gossip messages are validated
//!   with its outcome.
//! * A job tries one peer at a time: the peer that sent it, the author, then every
//!   other connected peer, peers with recent penalties last. A peer that fails is skipped; one that served objects
//!   that failed verification is penalized too; one that does not finish within the
//!   deadline is abandoned. When no peer could serve it, the job waits and tries
//!   them all again ([`RETRIES`] times) before it gives up.
//! * At most one job per repo fetches at a time (a later one then fetches only what
//!   the earlier did not bring), and at most [`Config::max_jobs`] in all.
//! * An update applied by catch-up is announced on gossip, so its neighbours do not
//!   wait for their own catch-up.
//! * An invalid update penalizes whoever sent it. A peer whose penalties pass
//!   [`BAN_SCORE`] is banned for [`Config::ban`]: disconnected and not dialed or
//!   asked.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    hash::Hash,
    time::Duration,
};

use crate::{acl::RepoId, git::Update};

/// An update's identity: its repo and the SHA-256 of its certificate.
pub type Key = (RepoId, [u8; 32]);

/// Penalty points at which a peer is banned.
pub const BAN_SCORE: f64 = 8.0;
/// Finished updates remembered, so repeated offers are answered without a job.
const REMEMBERED: usize = 4096;
/// Updates waiting for a job slot; more are dropped (catch-up brings them back).
const MAX_QUEUED: usize = 4096;
/// Rounds over all peers before a job gives up on an update no peer could serve
/// (the peers may be fetching it themselves): after 1, 2 and 4 seconds.
const RETRIES: u32 = 3;
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The core's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Jobs running at once.
    pub max_jobs: usize,
    /// How long one fetch from one peer may take before it is abandoned.
    pub fetch_deadline: Duration,
    /// How often every connected peer is asked for its digests.
    pub sync_interval: Duration,
    /// How long a banned peer stays banned.
    pub ban: Duration,
}

/// How an update arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Via {
    /// Gossip.
    Gossip,
    /// A catch-up answer.
    Catchup,
}

impl Via {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Via::Gossip => "gossip",
            Via::Catchup => "catchup",
        }
    }
}

/// What one attempt to fetch and apply an update from one peer came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Applied: refs moved.
    Applied,
    /// Nothing to do: this node had it all.
    Have,
    /// The update itself is invalid (signature, rights, binding): its sender is at
    /// fault.
    Invalid(String),
    /// The peer served objects that failed verification.
    BadPack(String),
    /// The peer could not serve (refused, unreachable, stream error).
    Failed(String),
    /// The update cannot be used here now (unknown repo, local failure).
    Unusable(String),
}

/// The verdict on a gossip message, for gossipsub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it.
    Accept,
    /// Invalid: drop it and count it against the sender.
    Reject,
    /// Not usable here: drop it, nobody at fault.
    Ignore,
}

/// Why a peer was penalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offense {
    /// It sent an invalid update.
    InvalidUpdate,
    /// It served objects that failed verification.
    BadPack,
    /// It did not finish a fetch within the deadline.
    Stalled,
}

impl Offense {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Offense::InvalidUpdate => "invalid_update",
            Offense::BadPack => "bad_pack",
            Offense::Stalled => "stalled",
        }
    }

    fn points(self) -> f64 {
        match self {
            Offense::InvalidUpdate | Offense::BadPack => 2.0,
            Offense::Stalled => 1.0,
        }
    }
}

/// How a job ended, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Refs moved.
    Applied,
    /// Nothing to do.
    Have,
    /// Invalid.
    Invalid(String),
    /// Not usable here, or no peer could serve it.
    Unusable(String),
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq)]
pub enum Command<P, M> {
    /// Verify `update`, fetch what is missing from `peer`, apply; report with
    /// [`Replicator::attempted`].
    Fetch {
        /// The update.
        key: Key,
        /// From whom.
        peer: P,
        /// The update.
        update: Update,
    },
    /// Stop the fetch of `key` in flight (past its deadline).
    Abandon {
        /// The update.
        key: Key,
    },
    /// Give gossipsub the verdict on a message.
    Report {
        /// The message.
        message: M,
        /// Who forwarded it.
        from: P,
        /// The verdict.
        verdict: Verdict,
    },
    /// A peer was penalized.
    Penalize {
        /// Whom.
        peer: P,
        /// Why.
        offense: Offense,
    },
    /// Disconnect `peer` and refuse it until it is unbanned.
    Ban {
        /// Whom.
        peer: P,
    },
    /// `peer` may connect again.
    Unban {
        /// Whom.
        peer: P,
    },
    /// Send `peer` this node's digests; offer what it answers with
    /// [`Replicator::offered`] ([`Via::Catchup`]).
    Sync {
        /// Whom.
        peer: P,
    },
    /// Publish `update` on gossip: it was applied by catch-up, so peers that missed
    /// its gossip hear of it now rather than at their next catch-up.
    Announce {
        /// The update.
        update: Update,
    },
    /// A job ended.
    Finished {
        /// The update.
        key: Key,
        /// How it first arrived.
        via: Via,
        /// How it ended.
        outcome: Outcome,
        /// When its origin accepted it (unix ms; 0 when unknown).
        announced_ms: u64,
    },
}

/// An update offered by a peer.
#[derive(Debug, Clone)]
pub struct Offer<P, M> {
    /// The update.
    pub update: Update,
    /// Its certificate's SHA-256.
    pub hash: [u8; 32],
    /// Who sent it.
    pub from: P,
    /// The node that first published it, if known.
    pub author: Option<P>,
    /// How it arrived.
    pub via: Via,
    /// The gossip message to report a verdict on.
    pub message: Option<M>,
    /// When its origin accepted it (unix ms; 0 when unknown).
    pub announced_ms: u64,
}

struct Job<P, M> {
    update: Update,
    via: Via,
    announced_ms: u64,
    /// Peers to try first, in order.
    preferred: Vec<P>,
    tried: HashSet<P>,
    /// The fetch in flight: from whom, since when.
    current: Option<(P, Duration)>,
    /// Gossip messages waiting for the verdict, with who forwarded each.
    messages: Vec<(M, P)>,
    /// Everyone who offered it (penalized if it is invalid).
    senders: Vec<P>,
    /// Rounds over all peers so far, and when the next starts (while waiting).
    rounds: u32,
    retry_at: Option<Duration>,
}

struct Peer {
    connected: bool,
    score: f64,
    banned_until: Option<Duration>,
}

/// The replication state machine of one node. `P` names peers, `M` gossip messages;
/// times are durations since any fixed origin.
pub struct Replicator<P, M> {
    config: Config,
    peers: BTreeMap<P, Peer>,
    jobs: HashMap<Key, Job<P, M>>,
    /// Jobs waiting for a slot or for their repo's fetch to end: gossip first, then
    /// in arrival order.
    queue: VecDeque<Key>,
    /// Repos with a job fetching (one each): the running jobs.
    busy: HashSet<RepoId>,
    /// Recently finished updates (applied or had): offers of them are accepted at once.
    done: HashSet<Key>,
    done_order: VecDeque<Key>,
    next_sync: Duration,
    last_decay: Duration,
    out: Vec<Command<P, M>>,
}

impl<P: Copy + Eq + Hash + Ord, M: Clone> Replicator<P, M> {
    /// A core with no peers.
    pub fn new(config: Config) -> Self {
        Self {
            next_sync: config.sync_interval,
            config,
            peers: BTreeMap::new(),
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            busy: HashSet::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
            last_decay: Duration::ZERO,
            out: Vec::new(),
        }
    }

    /// The commands produced so far, oldest first.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Command<P, M>> {
        self.out.drain(..)
    }

    /// Jobs not yet finished (running or queued).
    pub fn pending(&self) -> usize {
        self.jobs.len()
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &P) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.banned_until.is_some())
    }

    /// `peer` connected: it is asked for catch-up at once.
    pub fn connected(&mut self, peer: P) {
        let entry = self.peers.entry(peer).or_insert(Peer {
            connected: true,
            score: 0.0,
            banned_until: None,
        });
        entry.connected = true;
        if entry.banned_until.is_none() {
            self.out.push(Command::Sync { peer });
        }
    }

    /// `peer` disconnected. Its penalties are kept until they decay, so
    /// reconnecting does not clear them.
    pub fn disconnected(&mut self, peer: P) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.connected = false;
        }
        self.forget_idle();
    }

    /// Drops disconnected peers with nothing held against them.
    fn forget_idle(&mut self) {
        self.peers
            .retain(|_, p| p.connected || p.banned_until.is_some() || p.score >= 0.5);
    }

    fn usable(&self, peer: &P) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.connected && p.banned_until.is_none())
    }

    /// An update arrived.
    pub fn offered(&mut self, now: Duration, offer: Offer<P, M>) {
        let key = (offer.update.repo, offer.hash);
        if self.done.contains(&key) {
            if let Some(message) = offer.message {
                self.out.push(Command::Report {
                    message,
                    from: offer.from,
                    verdict: Verdict::Accept,
                });
            }
            return;
        }
        if let Some(job) = self.jobs.get_mut(&key) {
            // Gossip that arrives while catch-up fetches it still delivered it.
            if offer.via == Via::Gossip {
                job.via = Via::Gossip;
                job.announced_ms = job.announced_ms.max(offer.announced_ms);
            }
            if let Some(message) = offer.message {
                job.messages.push((message, offer.from));
            }
            if !job.senders.contains(&offer.from) {
                job.senders.push(offer.from);
            }
            if !job.preferred.contains(&offer.from) {
                job.preferred.push(offer.from);
            }
            return;
        }
        if self.queue.len() >= MAX_QUEUED {
            if let Some(message) = offer.message {
                self.out.push(Command::Report {
                    message,
                    from: offer.from,
                    verdict: Verdict::Ignore,
                });
            }
            return;
        }
        let mut preferred = vec![offer.from];
        if let Some(author) = offer.author
            && author != offer.from
        {
            preferred.push(author);
        }
        self.jobs.insert(
            key,
            Job {
                update: offer.update,
                via: offer.via,
                announced_ms: offer.announced_ms,
                preferred,
                tried: HashSet::new(),
                current: None,
                messages: offer
                    .message
                    .map(|m| vec![(m, offer.from)])
                    .unwrap_or_default(),
                senders: vec![offer.from],
                rounds: 0,
                retry_at: None,
            },
        );
        // Fresh gossip goes before a catch-up backlog.
        if offer.via == Via::Gossip {
            self.queue.push_front(key);
        } else {
            self.queue.push_back(key);
        }
        self.schedule(now);
    }

    /// This node has update `key` already (it accepted the push itself): offers of
    /// it are answered without a job.
    pub fn have(&mut self, key: Key) {
        self.remember(key);
    }

    fn remember(&mut self, key: Key) {
        if self.done.insert(key) {
            self.done_order.push_back(key);
            if self.done_order.len() > REMEMBERED
                && let Some(old) = self.done_order.pop_front()
            {
                self.done.remove(&old);
            }
        }
    }

    /// Starts queued jobs while there are slots and their repos are free.
    fn schedule(&mut self, now: Duration) {
        let mut i = 0;
        while i < self.queue.len() && self.busy.len() < self.config.max_jobs {
            let key = self.queue[i];
            if self.busy.contains(&key.0) {
                i += 1;
                continue;
            }
            self.queue.remove(i);
            self.busy.insert(key.0);
            self.next_attempt(now, key);
        }
    }

    /// Starts the job's next fetch, or ends it when no peer is left.
    fn next_attempt(&mut self, now: Duration, key: Key) {
        let Some(job) = self.jobs.get(&key) else {
            return;
        };
        // Clean peers first (the ones that offered it, then the rest), peers with
        // recent penalties last.
        let score = |p: &P| self.peers.get(p).map_or(0.0, |p| p.score);
        let next = job
            .preferred
            .iter()
            .chain(self.peers.keys())
            .filter(|p| !job.tried.contains(p) && self.usable(p))
            .enumerate()
            .min_by(|(i, a), (j, b)| score(a).total_cmp(&score(b)).then(i.cmp(j)))
            .map(|(_, p)| *p);
        match next {
            Some(peer) => {
                let Some(job) = self.jobs.get_mut(&key) else {
                    return;
                };
                job.tried.insert(peer);
                job.current = Some((peer, now));
                self.out.push(Command::Fetch {
                    key,
                    peer,
                    update: job.update.clone(),
                });
            }
            None if job.rounds < RETRIES => {
                let wait = RETRY_AFTER * 2u32.pow(job.rounds);
                if let Some(job) = self.jobs.get_mut(&key) {
                    job.rounds += 1;
                    job.tried.clear();
                    job.retry_at = Some(now + wait);
                }
                // Waiting frees the repo for other updates.
                self.busy.remove(&key.0);
                self.schedule(now);
            }
            None => self.finish(
                now,
                key,
                Outcome::Unusable("no connected peer could serve its objects".into()),
            ),
        }
    }

    /// The fetch of `key` from `peer` came to `attempt`.
    pub fn attempted(&mut self, now: Duration, key: Key, peer: P, attempt: Attempt) {
        let Some(job) = self.jobs.get_mut(&key) else {
            return;
        };
        if job.current.map(|(p, _)| p) != Some(peer) {
            return; // abandoned already
        }
        job.current = None;
        match attempt {
            Attempt::Applied => self.finish(now, key, Outcome::Applied),
            Attempt::Have => self.finish(now, key, Outcome::Have),
            Attempt::Invalid(why) => self.finish(now, key, Outcome::Invalid(why)),
            Attempt::Unusable(why) => self.finish(now, key, Outcome::Unusable(why)),
            Attempt::BadPack(_) => {
                self.penalize(now, peer, Offense::BadPack);
                self.next_attempt(now, key);
            }
            Attempt::Failed(_) => self.next_attempt(now, key),
        }
    }

    fn finish(&mut self, now: Duration, key: Key, outcome: Outcome) {
        let Some(job) = self.jobs.remove(&key) else {
            return;
        };
        self.busy.remove(&key.0);
        let verdict = match &outcome {
            Outcome::Applied | Outcome::Have => {
                self.remember(key);
                Verdict::Accept
            }
            Outcome::Invalid(_) => {
                for peer in &job.senders {
                    self.penalize(now, *peer, Offense::InvalidUpdate);
                }
                Verdict::Reject
            }
            Outcome::Unusable(_) => Verdict::Ignore,
        };
        for (message, from) in job.messages {
            self.out.push(Command::Report {
                message,
                from,
                verdict,
            });
        }
        if job.via == Via::Catchup && outcome == Outcome::Applied {
            self.out.push(Command::Announce {
                update: job.update.clone(),
            });
        }
        self.out.push(Command::Finished {
            key,
            via: job.via,
            outcome,
            announced_ms: job.announced_ms,
        });
        self.schedule(now);
    }

    fn penalize(&mut self, now: Duration, peer: P, offense: Offense) {
        self.out.push(Command::Penalize { peer, offense });
        let p = self.peers.entry(peer).or_insert(Peer {
            connected: false,
            score: 0.0,
            banned_until: None,
        });
        p.score += offense.points();
        if p.score >= BAN_SCORE && p.banned_until.is_none() {
            p.banned_until = Some(now + self.config.ban);
            self.out.push(Command::Ban { peer });
        }
    }

    /// Time passed: abandons fetches past their deadline, decays penalties, lifts
    /// bans that ran out, and asks every peer for catch-up every sync interval.
    pub fn tick(&mut self, now: Duration) {
        let stalled: Vec<(Key, P)> = self
            .jobs
            .iter()
            .filter_map(|(k, j)| {
                j.current
                    .filter(|(_, since)| now.saturating_sub(*since) >= self.config.fetch_deadline)
                    .map(|(p, _)| (*k, p))
            })
            .collect();
        for (key, peer) in stalled {
            if let Some(job) = self.jobs.get_mut(&key) {
                job.current = None;
            }
            self.out.push(Command::Abandon { key });
            self.penalize(now, peer, Offense::Stalled);
            self.next_attempt(now, key);
        }
        let due: Vec<Key> = self
            .jobs
            .iter()
            .filter(|(_, j)| j.retry_at.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in due {
            if let Some(job) = self.jobs.get_mut(&key) {
                job.retry_at = None;
            }
            self.queue.push_front(key);
        }
        self.schedule(now);
        // Penalties halve every minute.
        if now.saturating_sub(self.last_decay) >= Duration::from_secs(60) {
            self.last_decay = now;
            for p in self.peers.values_mut() {
                p.score /= 2.0;
            }
            self.forget_idle();
        }
        let unbanned: Vec<P> = self
            .peers
            .iter()
            .filter(|(_, p)| p.banned_until.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for peer in unbanned {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.banned_until = None;
                p.score = 0.0;
            }
            self.out.push(Command::Unban { peer });
        }
        self.forget_idle();
        if now >= self.next_sync {
            self.next_sync = now + self.config.sync_interval;
            let peers: Vec<P> = self
                .peers
                .keys()
                .filter(|p| self.usable(p))
                .copied()
                .collect();
            for peer in peers {
                self.out.push(Command::Sync { peer });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::git::replica::Claim;

    type R = Replicator<u32, u32>;

    fn core() -> R {
        Replicator::new(Config {
            max_jobs: 2,
            fetch_deadline: Duration::from_secs(10),
            sync_interval: Duration::from_secs(30),
            ban: Duration::from_secs(600),
        })
    }

    fn offer(repo: RepoId, hash: u8, from: u32, message: Option<u32>) -> Offer<u32, u32> {
        Offer {
            update: Update {
                repo,
                cert: vec![hash],
                claims: vec![Claim {
                    name: "refs/heads/main".into(),
                    target: [hash; 20],
                }],
                cosigned: Vec::new(),
            },
            hash: [hash; 32],
            from,
            author: None,
            via: if message.is_some() {
                Via::Gossip
            } else {
                Via::Catchup
            },
            message,
            announced_ms: 0,
        }
    }

    fn fetches(r: &mut R) -> Vec<(Key, u32)> {
        r.drain()
            .filter_map(|c| match c {
                Command::Fetch { key, peer, .. } => Some((key, peer)),
                _ => None,
            })
            .collect()
    }

    /// The fetches among the commands so far; the other commands go to `out`.
    fn fetches_and(r: &mut R, out: &mut Vec<Command<u32, u32>>) -> Vec<(Key, u32)> {
        let mut fetches = Vec::new();
        for c in r.drain() {
            match c {
                Command::Fetch { key, peer, .. } => fetches.push((key, peer)),
                other => out.push(other),
            }
        }
        fetches
    }

    const T: Duration = Duration::ZERO;

    #[test]
    fn one_fetch_per_update_however_often_it_is_offered() {
        let mut r = core();
        for p in 1..=3 {
            r.connected(p);
        }
        r.drain().for_each(drop);
        r.offered(T, offer(1, 7, 1, Some(100)));
        r.offered(T, offer(1, 7, 2, Some(101)));
        r.offered(T, offer(1, 7, 3, None));
        assert_eq!(fetches(&mut r), vec![((1, [7; 32]), 1)]);
        r.attempted(T, (1, [7; 32]), 1, Attempt::Applied);
        let out: Vec<_> = r.drain().collect();
        let accepted = out
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Command::Report {
                        verdict: Verdict::Accept,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(accepted, 2, "both messages validated by the one job");
        // Offered again later: accepted without a job.
        r.offered(T, offer(1, 7, 2, Some(102)));
        assert!(matches!(
            r.drain().next(),
            Some(Command::Report {
                verdict: Verdict::Accept,
                message: 102,
                ..
            })
        ));
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn a_repo_fetches_one_update_at_a_time() {
        let mut r = core();
        r.connected(1);
        r.drain().for_each(drop);
        r.offered(T, offer(1, 1, 1, None));
        r.offered(T, offer(1, 2, 1, None));
        r.offered(T, offer(2, 3, 1, None));
        assert_eq!(fetches(&mut r), vec![((1, [1; 32]), 1), ((2, [3; 32]), 1)]);
        r.attempted(T, (1, [1; 32]), 1, Attempt::Applied);
        assert_eq!(fetches(&mut r), vec![((1, [2; 32]), 1)]);
    }

    #[test]
    fn failures_move_on_and_bad_packs_and_stalls_cost() {
        let mut r = core();
        for p in 1..=3 {
            r.connected(p);
        }
        r.drain().for_each(drop);
        let key = (1, [5; 32]);
        r.offered(T, offer(1, 5, 2, None));
        assert_eq!(fetches(&mut r), vec![(key, 2)]);
        r.attempted(T, key, 2, Attempt::BadPack("bad delta".into()));
        let out: Vec<_> = r.drain().collect();
        assert!(out.contains(&Command::Penalize {
            peer: 2,
            offense: Offense::BadPack
        }));
        assert!(
            out.iter()
                .any(|c| matches!(c, Command::Fetch { peer: 1, .. }))
        );
        // Peer 1 stalls: abandoned at the deadline, then peer 3.
        r.tick(Duration::from_secs(10));
        let out: Vec<_> = r.drain().collect();
        assert!(out.contains(&Command::Abandon { key }));
        assert!(out.contains(&Command::Penalize {
            peer: 1,
            offense: Offense::Stalled
        }));
        assert!(
            out.iter()
                .any(|c| matches!(c, Command::Fetch { peer: 3, .. }))
        );
        // A late answer from peer 1 is ignored.
        r.attempted(Duration::from_secs(11), key, 1, Attempt::Applied);
        assert!(r.drain().next().is_none());
        r.attempted(
            Duration::from_secs(11),
            key,
            3,
            Attempt::Failed("gone".into()),
        );
        // No peer could serve it: the job waits, then tries them all again, three
        // rounds in all, before it gives up.
        assert!(r.drain().next().is_none());
        let mut t = Duration::from_secs(11);
        for round in 0..3 {
            t += Duration::from_secs(1 << round);
            r.tick(t);
            // Clean peer 3 first, then 1 (one stall), then 2 (a bad pack).
            for peer in [3, 1, 2] {
                let out: Vec<_> = r.drain().collect();
                assert!(
                    out.iter()
                        .any(|c| matches!(c, Command::Fetch { peer: p, .. } if *p == peer)),
                    "round {round}: {out:?}"
                );
                r.attempted(t, key, peer, Attempt::Failed("lacks it".into()));
            }
        }
        let out: Vec<_> = r.drain().collect();
        assert!(
            out.iter().any(|c| matches!(
                c,
                Command::Finished {
                    outcome: Outcome::Unusable(_),
                    ..
                }
            )),
            "{out:?}"
        );
    }

    #[test]
    fn invalid_updates_cost_every_sender_until_banned() {
        let mut r = core();
        r.connected(1);
        r.connected(2);
        r.drain().for_each(drop);
        let mut out = Vec::new();
        for h in 0..4 {
            r.offered(T, offer(u64::from(h), h, 1, Some(u32::from(h))));
            // Verification fails before any fetch, whichever peer was picked.
            let (key, peer) = fetches_and(&mut r, &mut out)[0];
            r.attempted(T, key, peer, Attempt::Invalid("forged".into()));
        }
        out.extend(r.drain());
        assert_eq!(
            out.iter()
                .filter(|c| matches!(
                    c,
                    Command::Report {
                        verdict: Verdict::Reject,
                        ..
                    }
                ))
                .count(),
            4
        );
        assert!(out.contains(&Command::Ban { peer: 1 }));
        assert!(r.is_banned(&1));
        // Banned: not asked for catch-up, not fetched from.
        r.tick(Duration::from_secs(30));
        let out: Vec<_> = r.drain().collect();
        assert_eq!(out, vec![Command::Sync { peer: 2 }]);
        r.tick(Duration::from_secs(601));
        assert!(r.drain().any(|c| c == Command::Unban { peer: 1 }));
    }
}
