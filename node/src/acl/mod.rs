//! The access-control list: what the chain says, as an immutable snapshot, and every
//! permission question the node asks.
//!
//! Data enters only as [`Change`]s, which `chain` decodes from contract logs and
//! applies in chain order with [`State::apply`]; the syncer then publishes the new
//! state as an `Arc<Snapshot>` through an [`Acl`] handle. Readers take the current
//! snapshot and never block the sync. Nothing here does I/O.

mod state;
pub mod view;

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256, utils::format_ether};
use tokio::sync::watch;

pub use state::{
    Balance, Change, Identity, IdentityId, Key, Member, Operator, Params, RefRule, Repo, RepoId,
    StakeRole, State, pattern_matches,
};

use crate::keys::{NodeId, SshKey};

/// A block the ACL reflects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BlockRef {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
}

/// The ACL as of one block.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The last block applied; `None` before the deployment block.
    pub block: Option<BlockRef>,
    /// Unix time (seconds) of `block`.
    pub block_time: u64,
    /// Logs applied since the deployment block.
    pub events_applied: u64,
    /// The chain state.
    pub state: State,
}

/// Why a request is refused; the message names the key, identity or repo and the fix.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no repo named {0:?} on chain")]
    UnknownRepo(String),
    #[error("key {0} belongs to no identity; add it with `hanzo-node identity add-key`")]
    UnknownKey(String),
    #[error("key {key} belongs to identity {handle}, who is not a committer of repo {repo}")]
    NotCommitter {
        key: String,
        handle: String,
        repo: String,
    },
    #[error("key {key} belongs to identity {handle}, who may not read private repo {repo}")]
    NotReader {
        key: String,
        handle: String,
        repo: String,
    },
    #[error(
        "only the owner of repo {repo} may rewrite or delete {reference} (for a ref rule, the owner among its signers); {handle} is not the owner"
    )]
    NotOwner {
        handle: String,
        repo: String,
        reference: String,
    },
    #[error(
        "key {key} belongs to identity {handle}, who may not move {} of repo {}: its ref rule {} on chain allows only {}",
        .ruled.reference, .ruled.repo, .ruled.pattern, .ruled.signers
    )]
    NotSigner {
        key: String,
        handle: String,
        ruled: Box<Ruled>,
    },
    #[error(
        "{} of repo {} needs the signatures of {} of {} (ref rule {} on chain); signed so far by {}",
        .0.reference, .0.repo, .0.threshold, .0.signers, .0.pattern, .0.signed
    )]
    NeedsSignatures(Box<Ruled>),
    #[error("stake {stake} is below the minimum {minimum}; deposit at least {missing} more")]
    StakeBelowMinimum {
        stake: String,
        minimum: String,
        missing: String,
    },
}

/// A ref and the rule that governs it, as a refusal names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruled {
    /// The repo's name.
    pub repo: String,
    /// The ref.
    pub reference: String,
    /// The rule's pattern.
    pub pattern: String,
    /// Signatures an update needs.
    pub threshold: u8,
    /// The signers' handles, comma-separated.
    pub signers: String,
    /// How many of the signers signed this update.
    pub have: usize,
    /// Their handles, comma-separated.
    pub signed: String,
    /// The handles of the signers who have not signed it, comma-separated.
    pub missing: String,
}

/// What a permitted push may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pusher {
    /// The pushing identity.
    pub identity: IdentityId,
    /// Its handle.
    pub handle: String,
    /// Whether it owns the repo (may force-push and delete refs).
    pub is_owner: bool,
}

/// What a caller is to this node, from chain state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// No stake: health only.
    Anonymous,
    /// A staked caller.
    Caller,
    /// An active operator of another node.
    OperatorPeer,
    /// The operator of this node: admin.
    Admin,
}

/// `amount` wei as ETH, trailing zeros trimmed: `0.2 ETH`.
pub fn eth(amount: U256) -> String {
    let s = format_ether(amount);
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    format!("{s} ETH")
}

/// The git base URLs in an operator's on-chain endpoint: its `http://` and
/// `https://` entries (whitespace- or comma-separated), without a trailing `/`.
pub fn git_urls(endpoint: &str) -> impl Iterator<Item = &str> {
    endpoint
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
        .map(|s| s.trim_end_matches('/'))
}

impl Snapshot {
    /// Whether `url` is a git base URL in some operator's on-chain endpoint: where a
    /// push certificate of this network was pushed to. Operators that lost their
    /// stake count too: the pushes they accepted stay valid.
    pub fn is_operator_url(&self, url: &str) -> bool {
        self.state
            .operators
            .values()
            .any(|op| git_urls(&op.endpoint).any(|u| u.eq_ignore_ascii_case(url)))
    }

    /// The on-chain endpoint of the operator whose node key is `node`, if any.
    pub fn endpoint_of(&self, node: &NodeId) -> Option<&str> {
        self.state
            .operator_by_node(node)
            .map(|(_, op)| op.endpoint.as_str())
    }

    /// The repo named `name`: its token id and record.
    pub fn repo(&self, name: &str) -> Result<(RepoId, &Repo), Denied> {
        self.state
            .repo_by_name(name)
            .ok_or_else(|| Denied::UnknownRepo(name.to_owned()))
    }

    /// Whether `node` is the node key of an operator with active stake.
    pub fn is_operator(&self, node: &NodeId) -> bool {
        self.state
            .operator_by_node(node)
            .is_some_and(|(_, op)| self.is_active(op))
    }

    fn is_active(&self, op: &Operator) -> bool {
        op.balance.stake >= self.state.params.min_operator_stake
    }

    /// Active operators, by address.
    pub fn active_operators(&self) -> impl Iterator<Item = (&Address, &Operator)> {
        self.state
            .operators
            .iter()
            .filter(|(_, op)| self.is_active(op))
    }

    /// The active stake of caller `addr` (zero if none).
    pub fn caller_stake(&self, addr: &Address) -> U256 {
        self.state
            .callers
            .get(addr)
            .map(|b| b.stake)
            .unwrap_or_default()
    }

    /// Whether `addr` holds at least the caller minimum, and if not, what is missing.
    pub fn check_caller(&self, addr: &Address) -> Result<U256, Denied> {
        let stake = self.caller_stake(addr);
        let minimum = self.state.params.min_caller_stake;
        if stake >= minimum && !stake.is_zero() {
            return Ok(stake);
        }
        let minimum = minimum.max(U256::from(1));
        Err(Denied::StakeBelowMinimum {
            stake: eth(stake),
            minimum: eth(minimum),
            missing: eth(minimum - stake),
        })
    }

    /// The identity holding `key`.
    pub fn identity_of(&self, key: &Key) -> Option<(IdentityId, &Identity)> {
        let id = *self.state.keys.get(key)?;
        Some((id, self.state.identities.get(&id)?))
    }

    /// The handles of `ids`, comma-separated (an id without an identity as `#id`).
    fn handles<'a>(&self, ids: impl IntoIterator<Item = &'a IdentityId>) -> String {
        ids.into_iter()
            .map(|id| {
                self.state
                    .identities
                    .get(id)
                    .map_or_else(|| format!("#{id}"), |i| i.handle.clone())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether the holder of `key` may move `reference` of repo `repo`, with the
    /// same update also signed by `cosigners`; `rewrite` is a non-fast-forward update
    /// or a deletion.
    ///
    /// A ref that a rule of the repo governs ([`Repo::rule_for`]) may be moved by the
    /// rule's signers only (committers or not), and only when `threshold` distinct
    /// signer identities signed the update: `key`'s and the cosigners' (cosigners
    /// that are not the rule's signers do not count). Other refs may be moved by
    /// committers and the owner. A rewrite needs the owner among those who signed.
    pub fn may_push(
        &self,
        key: &SshKey,
        cosigners: &[SshKey],
        repo: &str,
        reference: &str,
        rewrite: bool,
    ) -> Result<Pusher, Denied> {
        let (_, r) = self.repo(repo)?;
        let (identity, who) = self
            .identity_of(&Key::Ssh(*key))
            .ok_or_else(|| Denied::UnknownKey(key.fingerprint()))?;
        let is_owner = r.owner_identity == identity;
        let mut signed = std::collections::BTreeSet::from([identity]);
        if let Some((pattern, rule)) = r.rule_for(reference) {
            signed.extend(
                cosigners
                    .iter()
                    .filter_map(|k| self.identity_of(&Key::Ssh(*k)).map(|(id, _)| id))
                    .filter(|id| rule.signers.contains(id)),
            );
            let ruled = || {
                Box::new(Ruled {
                    repo: repo.to_owned(),
                    reference: reference.to_owned(),
                    pattern: pattern.to_owned(),
                    threshold: rule.threshold,
                    signers: self.handles(&rule.signers),
                    have: signed.len(),
                    signed: self.handles(&signed),
                    missing: self.handles(rule.signers.difference(&signed)),
                })
            };
            if !rule.signers.contains(&identity) {
                return Err(Denied::NotSigner {
                    key: key.fingerprint(),
                    handle: who.handle.clone(),
                    ruled: ruled(),
                });
            }
            if signed.len() < usize::from(rule.threshold) {
                return Err(Denied::NeedsSignatures(ruled()));
            }
        } else if !is_owner && !r.committers.contains(&identity) {
            return Err(Denied::NotCommitter {
                key: key.fingerprint(),
                handle: who.handle.clone(),
                repo: repo.to_owned(),
            });
        }
        if rewrite && !signed.contains(&r.owner_identity) {
            return Err(Denied::NotOwner {
                handle: who.handle.clone(),
                repo: repo.to_owned(),
                reference: reference.to_owned(),
            });
        }
        Ok(Pusher {
            identity,
            handle: who.handle.clone(),
            is_owner,
        })
    }

    /// Whether the holder of `key` may read repo `repo`: anyone for a public repo;
    /// readers, committers and the owner for a private one.
    pub fn may_read(&self, key: Option<&Key>, repo: &str) -> Result<(), Denied> {
        let (_, r) = self.repo(repo)?;
        if !r.private {
            return Ok(());
        }
        let describe = |k: &Key| match k {
            Key::Ssh(s) => s.fingerprint(),
            Key::Eth(a) => a.to_string(),
        };
        let Some(key) = key else {
            return Err(Denied::UnknownKey("(none given)".into()));
        };
        let (identity, who) = self
            .identity_of(key)
            .ok_or_else(|| Denied::UnknownKey(describe(key)))?;
        if r.owner_identity == identity
            || r.committers.contains(&identity)
            || r.readers.contains(&identity)
        {
            Ok(())
        } else {
            Err(Denied::NotReader {
                key: describe(key),
                handle: who.handle.clone(),
                repo: repo.to_owned(),
            })
        }
    }

    /// The nodes that should hold repo `repo`: its preferred replicators that are active
    /// operators' nodes, or, when it names none of those, every active operator's node.
    pub fn replicators(&self, repo: &str) -> Result<Vec<NodeId>, Denied> {
        let (_, r) = self.repo(repo)?;
        let preferred: Vec<NodeId> = r
            .replicators
            .iter()
            .filter(|n| self.is_operator(n))
            .copied()
            .collect();
        if !preferred.is_empty() {
            return Ok(preferred);
        }
        Ok(self.active_operators().map(|(_, op)| op.node_key).collect())
    }

    /// What `addr` is to the node whose key is `this_node`.
    pub fn rpc_role(&self, addr: &Address, this_node: &NodeId) -> Role {
        let operator = self
            .state
            .operators
            .get(addr)
            .filter(|op| self.is_active(op));
        match operator {
            Some(op) if op.node_key == *this_node => Role::Admin,
            Some(_) => Role::OperatorPeer,
            None if self.check_caller(addr).is_ok() => Role::Caller,
            None => Role::Anonymous,
        }
    }
}

/// A cloneable handle to the current ACL snapshot.
#[derive(Clone, Debug)]
pub struct Acl(watch::Receiver<Arc<Snapshot>>);

/// The writing side of an [`Acl`], held by the chain syncer.
#[derive(Debug)]
pub struct Publisher(watch::Sender<Arc<Snapshot>>);

impl Acl {
    /// A handle and its publisher, starting from `initial`.
    pub fn new(initial: Snapshot) -> (Self, Publisher) {
        let (tx, rx) = watch::channel(Arc::new(initial));
        (Self(rx), Publisher(tx))
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.0.borrow().clone()
    }

    /// Waits until a snapshot newer than the last one seen by this handle is published.
    pub async fn changed(&mut self) -> Result<Arc<Snapshot>, watch::error::RecvError> {
        self.0.changed().await?;
        Ok(self.0.borrow_and_update().clone())
    }
}

impl Publisher {
    /// Makes `snapshot` current for every handle.
    pub fn publish(&self, snapshot: Arc<Snapshot>) {
        self.0.send_replace(snapshot);
    }

    /// A handle reading what this publisher publishes.
    pub fn subscribe(&self) -> Acl {
        Acl(self.0.subscribe())
    }
}

#[cfg(test)]
mod tests;
