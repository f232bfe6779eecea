//! Pushes acknowledged by a quorum of replicas. A push may ask (`git push -o
//! hanzo.quorum=2`, signed in its certificate, or a per-repo default in
//! `git.quorum`) that its pusher be told `ok` only once that many other replicas
//! have verified the update and stored its objects and certificate, each answering
//! with a [`Receipt`] signed by its node key. The transport is `p2p`'s
//! ([`Witnesses`]); what a receipt says and how it is checked is here, without I/O.

use std::time::Duration;

use futures_util::future::BoxFuture;

use super::replica::Update;
use crate::keys::{NodeId, NodeKey};

/// The push option that asks for a quorum.
pub const OPTION: &str = "hanzo.quorum";

/// How many other replicas must hold a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    /// This many.
    Count(usize),
    /// Every other replica of the repo.
    All,
}

/// The quorum `options` (a certificate's push options) ask for: `None` when they
/// ask for none.
pub fn requested(options: &[String]) -> Result<Option<Quorum>, String> {
    let mut asked = None;
    for option in options {
        let Some(value) = option
            .strip_prefix(OPTION)
            .and_then(|rest| rest.strip_prefix('='))
        else {
            continue;
        };
        asked = Some(match value {
            "all" => Quorum::All,
            n => Quorum::Count(n.parse().map_err(|_| {
                format!("push option {OPTION}={value}: give a number of replicas or \"all\"")
            })?),
        });
    }
    Ok(asked.filter(|q| *q != Quorum::Count(0)))
}

/// A replica's statement, signed with its node key, that it verified an update and
/// stored its objects and certificate. A replica that signed one and later cannot
/// serve the objects can be shown at fault with it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The replica's node key.
    pub node: NodeId,
    /// Unix time (seconds) at which it stored the update.
    pub time: u64,
    /// Its ed25519 signature of [`Receipt::message`].
    pub signature: Vec<u8>,
}

impl Receipt {
    /// What a receipt for `update` on network `network` signs: a domain tag, the
    /// network, the repo, the certificate's SHA-256, each ref and the tip the update
    /// gives it, the node and the time.
    pub fn message(network: &str, update: &Update, node: &NodeId, time: u64) -> Vec<u8> {
        let mut m = b"hanzo-node push receipt v1\0".to_vec();
        m.extend_from_slice(network.as_bytes());
        m.push(0);
        m.extend_from_slice(&update.repo.to_be_bytes());
        m.extend_from_slice(&update.cert_hash());
        let mut claims: Vec<_> = update.claims.iter().collect();
        claims.sort_by(|a, b| a.name.cmp(&b.name));
        for c in claims {
            m.extend_from_slice(c.name.as_bytes());
            m.push(0);
            m.extend_from_slice(&c.target);
        }
        m.extend_from_slice(&node.0);
        m.extend_from_slice(&time.to_be_bytes());
        m
    }

    /// `key`'s receipt for `update`, stored at `time`.
    pub fn sign(key: &NodeKey, network: &str, update: &Update, time: u64) -> Self {
        let node = key.public();
        Self {
            signature: key
                .sign(&Self::message(network, update, &node, time))
                .to_vec(),
            node,
            time,
        }
    }

    /// Whether this is a valid receipt for `update` on `network`.
    pub fn verifies(&self, network: &str, update: &Update) -> bool {
        self.node.verifies(
            &Self::message(network, update, &self.node, self.time),
            &self.signature,
        )
    }
}

/// The receipts of one update, as the store keeps them.
pub fn encode(receipts: &[Receipt]) -> Vec<u8> {
    // Plain data with no maps or floats: encoding cannot fail.
    postcard::to_stdvec(receipts).unwrap_or_default()
}

/// Decodes [`encode`]'s bytes.
pub fn decode(bytes: &[u8]) -> Result<Vec<Receipt>, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("corrupt receipts: {e}"))
}

/// What asking the other replicas came to.
#[derive(Debug, Default)]
pub struct Gathered {
    /// Valid receipts, in the order they arrived.
    pub receipts: Vec<Receipt>,
    /// How many replicas were asked.
    pub asked: usize,
    /// Replicas that answered with a refusal, and why.
    pub refused: Vec<(NodeId, String)>,
}

/// The other replicas of a repo, as `p2p` reaches them.
pub trait Witnesses: Send + Sync {
    /// Asks every other replica of `update.repo` that is connected to verify and
    /// store `update` (whose objects are in this node's repo), and returns when
    /// `want` of them have answered with valid receipts (`None`: all of them), all
    /// have answered, or `timeout` passed.
    fn gather(
        &self,
        update: Update,
        want: Option<usize>,
        timeout: Duration,
    ) -> BoxFuture<'static, Gathered>;

    /// Tells `nodes` (which gave receipts) to apply `update`: this node applied it.
    /// Returns when they answered or `timeout` passed.
    fn commit(
        &self,
        update: Update,
        nodes: Vec<NodeId>,
        timeout: Duration,
    ) -> BoxFuture<'static, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::git::replica::Claim;

    fn update(target: u8) -> Update {
        Update {
            repo: 7,
            cert: b"cert".to_vec(),
            claims: vec![Claim {
                name: "refs/heads/main".into(),
                target: [target; 20],
            }],
            cosigned: Vec::new(),
        }
    }

    #[test]
    fn options_name_the_quorum() {
        let opts = |o: &[&str]| o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(requested(&opts(&[])), Ok(None));
        assert_eq!(requested(&opts(&["ci.skip"])), Ok(None));
        assert_eq!(
            requested(&opts(&["hanzo.quorum=2"])),
            Ok(Some(Quorum::Count(2)))
        );
        assert_eq!(
            requested(&opts(&["hanzo.quorum=all"])),
            Ok(Some(Quorum::All))
        );
        assert_eq!(requested(&opts(&["hanzo.quorum=0"])), Ok(None));
        assert!(requested(&opts(&["hanzo.quorum=two"])).is_err());
    }

    #[test]
    fn a_receipt_is_bound_to_its_update_network_and_node() {
        let key = NodeKey::from_seed(&[3; 32]);
        let r = Receipt::sign(&key, "net-a", &update(1), 100);
        assert!(r.verifies("net-a", &update(1)));
        assert!(!r.verifies("net-b", &update(1)), "another network");
        assert!(!r.verifies("net-a", &update(2)), "another tip");
        let mut other_repo = update(1);
        other_repo.repo = 8;
        assert!(!r.verifies("net-a", &other_repo), "another repo");
        let mut later = r.clone();
        later.time = 101;
        assert!(!later.verifies("net-a", &update(1)), "another time");
        let mut claimed = r.clone();
        claimed.node = NodeKey::from_seed(&[4; 32]).public();
        assert!(!claimed.verifies("net-a", &update(1)), "another node");
        assert_eq!(decode(&encode(std::slice::from_ref(&r))).unwrap(), vec![r]);
        assert!(decode(&[0xff, 0xff]).is_err());
    }
}
