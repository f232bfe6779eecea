//! The ref register: how replicas agree on a ref's tip whatever order updates reach
//! them in. No I/O here.
//!
//! Every ref tip is justified by a signed push certificate. Two certificates for the
//! same ref are ordered by (certificate time, size of the tip's history, certificate
//! hash); the greater one wins on every node. Certificate times are whole seconds:
//! the history size makes a push that builds on one made in the same second win,
//! as every replica can check from the objects alone. The loser's tip is kept under [`superseded_name`] unless the winner
//! already contains it, so no pushed commit is lost.

use std::cmp::Ordering;

/// The prefix of refs that keep tips overtaken by a newer certificate.
pub const SUPERSEDED_PREFIX: &str = "refs/superseded/";
/// Hex digits of the certificate hash in a superseded ref's name.
const HASH_DIGITS: usize = 16;

/// Where a version of a ref stands in the register's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The certificate's `pusher` time (unix seconds).
    pub timestamp: u64,
    /// Commits in the tip's history (0 for a deletion); only compared between
    /// versions of the same second, so callers may leave it 0 otherwise.
    pub history: u64,
    /// SHA-256 of the certificate: breaks the remaining ties.
    pub cert: [u8; 32],
}

/// What an incoming version of a ref means for the replica that holds `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The replica already holds this very version.
    Have,
    /// The incoming version is newer (or the ref is unknown): it becomes the tip.
    Wins,
    /// The replica's version is newer: the incoming one only may need keeping.
    Loses,
}

/// The register's decision for one ref.
pub fn decide(current: Option<Version>, incoming: Version) -> Outcome {
    let Some(current) = current else {
        return Outcome::Wins;
    };
    match incoming.cmp(&current) {
        Ordering::Equal => Outcome::Have,
        Ordering::Greater => Outcome::Wins,
        Ordering::Less => Outcome::Loses,
    }
}

/// The ref that keeps the tip `reference` had under certificate `cert` once a newer
/// certificate overtook it: `refs/superseded/<16 hex digits of cert>/<rest of ref>`.
pub fn superseded_name(reference: &str, cert: &[u8; 32]) -> String {
    let rest = reference.strip_prefix("refs/").unwrap_or(reference);
    let hash = hex::encode(&cert[..HASH_DIGITS / 2]);
    format!("{SUPERSEDED_PREFIX}{hash}/{rest}")
}

/// For a superseded ref's name: the ref it was a tip of, if `cert` is the certificate
/// its name says.
pub fn superseded_of(name: &str, cert: &[u8; 32]) -> Option<String> {
    let rest = name.strip_prefix(SUPERSEDED_PREFIX)?;
    let (hash, reference) = rest.split_once('/')?;
    (hash == hex::encode(&cert[..HASH_DIGITS / 2])).then(|| format!("refs/{reference}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn v(timestamp: u64, h: u8) -> Version {
        Version {
            timestamp,
            history: 0,
            cert: [h; 32],
        }
    }

    #[test]
    fn newer_wins_older_loses_same_is_had() {
        assert_eq!(decide(None, v(1, 1)), Outcome::Wins);
        assert_eq!(decide(Some(v(1, 1)), v(2, 0)), Outcome::Wins);
        assert_eq!(decide(Some(v(2, 0)), v(1, 9)), Outcome::Loses);
        assert_eq!(decide(Some(v(2, 3)), v(2, 3)), Outcome::Have);
        // One second, two certificates: the hash decides, the same way everywhere.
        assert_eq!(decide(Some(v(2, 3)), v(2, 4)), Outcome::Wins);
        assert_eq!(decide(Some(v(2, 4)), v(2, 3)), Outcome::Loses);
        // In one second, the longer history wins whatever the hashes.
        let longer = Version {
            history: 9,
            ..v(2, 0)
        };
        assert_eq!(decide(Some(v(2, 4)), longer), Outcome::Wins);
    }

    #[test]
    fn superseded_names_round_trip() {
        let cert = [0xab; 32];
        let name = superseded_name("refs/heads/main", &cert);
        assert_eq!(name, "refs/superseded/abababababababab/heads/main");
        assert_eq!(
            superseded_of(&name, &cert).as_deref(),
            Some("refs/heads/main")
        );
        assert_eq!(superseded_of(&name, &[0; 32]), None);
        assert_eq!(superseded_of("refs/heads/main", &cert), None);
    }

    /// A replica as the node runs one: a tip per ref, and the losers it kept. Commits
    /// form a toy history where commit `n` descends from every commit `m < n` with
    /// `n % m == 0` (an order with both ancestors and divergent branches); its
    /// history is its divisors.
    #[derive(Default, Debug, PartialEq, Eq)]
    struct Replica {
        tips: BTreeMap<&'static str, (Version, u64)>,
        kept: BTreeSet<u64>,
    }

    fn contains(tip: u64, commit: u64) -> bool {
        commit == tip || (commit != 0 && tip.is_multiple_of(commit))
    }

    impl Replica {
        fn deliver(&mut self, reference: &'static str, version: Version, commit: u64) {
            let current = self.tips.get(reference).copied();
            match decide(current.map(|(v, _)| v), version) {
                Outcome::Have => {}
                Outcome::Wins => {
                    if let Some((_, old)) = current
                        && !contains(commit, old)
                    {
                        self.kept.insert(old);
                    }
                    self.tips.insert(reference, (version, commit));
                }
                Outcome::Loses => {
                    let (_, tip) = current.unwrap();
                    if !contains(tip, commit) {
                        self.kept.insert(commit);
                    }
                }
            }
        }

        /// Every commit ever delivered is the tip, in it, or kept.
        fn loses_nothing(&self, delivered: &[Update]) -> bool {
            delivered.iter().all(|(r, _, c)| {
                let (_, tip) = self.tips[r];
                contains(tip, *c) || self.kept.iter().any(|k| contains(*k, *c))
            })
        }
    }

    type Update = (&'static str, Version, u64);

    fn updates() -> impl Strategy<Value = Vec<Update>> {
        prop::collection::vec(
            (
                prop::sample::select(vec!["refs/heads/main", "refs/heads/dev"]),
                0u64..20,
                any::<u8>(),
                1u64..60,
            )
                .prop_map(|(r, t, h, c)| {
                    let history = (1..=c).filter(|d| c.is_multiple_of(*d)).count() as u64;
                    (r, Version { history, ..v(t, h) }, c)
                }),
            1..24,
        )
    }

    /// Updates with one commit per certificate, and several random orders of them.
    fn deliveries() -> impl Strategy<Value = (Vec<Update>, Vec<Vec<Update>>)> {
        updates().prop_flat_map(|updates| {
            let mut by_version = BTreeMap::new();
            let updates: Vec<Update> = updates
                .into_iter()
                .filter(|(r, v, c)| by_version.insert((*r, *v), *c).is_none())
                .collect();
            let orders = prop::collection::vec(Just(updates.clone()).prop_shuffle(), 2..5);
            (Just(updates), orders)
        })
    }

    proptest! {
        /// Whatever order updates arrive in, and however often (each order is
        /// delivered twice), every replica settles on the same tip per ref: the newest
        /// certificate's; and none loses a commit.
        #[test]
        fn replicas_converge_in_any_delivery_order((updates, orders) in deliveries()) {
            let mut replicas = Vec::new();
            for order in orders {
                let mut replica = Replica::default();
                for (r, v, c) in order.iter().chain(order.iter().rev()) {
                    replica.deliver(r, *v, *c);
                }
                prop_assert!(replica.loses_nothing(&updates));
                replicas.push(replica);
            }
            let mut newest: BTreeMap<&str, (Version, u64)> = BTreeMap::new();
            for (r, v, c) in &updates {
                let e = newest.entry(*r).or_insert((*v, *c));
                if *v > e.0 {
                    *e = (*v, *c);
                }
            }
            for replica in &replicas {
                prop_assert_eq!(&replica.tips, &newest);
            }
        }
    }
}
