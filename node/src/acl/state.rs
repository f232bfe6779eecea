//! The chain state the ACL is built from, and how each [`Change`] updates it.

use std::collections::{BTreeMap, BTreeSet};

use alloy::primitives::{Address, U256};

use crate::keys::{NodeId, SshKey};

/// IdentityToken id.
pub type IdentityId = u64;
/// RepoToken id.
pub type RepoId = u64;

/// A key an identity holds.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Key {
    /// An ed25519 SSH key (git push certificates).
    Ssh(#[serde(with = "ssh_bytes")] SshKey),
    /// An Ethereum address (RPC sign-in).
    Eth(Address),
}

mod ssh_bytes {
    use crate::keys::SshKey;
    pub fn serialize<S: serde::Serializer>(k: &SshKey, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&k.0, s)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SshKey, D::Error> {
        <[u8; 32] as serde::Deserialize>::deserialize(d).map(SshKey)
    }
}

impl PartialOrd for SshKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for SshKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// Which stake an amount belongs to (the contract's `Role`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StakeRole {
    /// Operator stake.
    Operator,
    /// Caller stake.
    Caller,
}

/// A repo membership kind (the contract's `Member`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Member {
    /// May push.
    Committer,
    /// May read a private repo.
    Reader,
}

/// Stake parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Minimum active stake of an operator.
    pub min_operator_stake: U256,
    /// Minimum active stake of a caller.
    pub min_caller_stake: U256,
    /// Seconds between an unstake request and its withdrawal.
    pub unbonding_period: u64,
}

/// Active and unbonding stake.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Balance {
    /// Counts.
    pub stake: U256,
    /// Does not count; withdrawable after the unbonding period.
    pub unbonding: U256,
}

/// A registered operator.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Operator {
    /// The node's ed25519 key.
    pub node_key: NodeId,
    /// Its on-chain endpoint: the git URL (`http(s)://…`) and p2p multiaddrs.
    pub endpoint: String,
    /// Operator stake.
    pub balance: Balance,
}

/// An IdentityToken.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// Unique handle.
    pub handle: String,
    /// Token holder.
    pub holder: Address,
    /// Keys, in the order added.
    pub keys: Vec<Key>,
}

/// A RepoToken.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Repo {
    /// Unique name.
    pub name: String,
    /// Token holder (manages the repo).
    pub holder: Address,
    /// The identity that may rewrite history.
    pub owner_identity: IdentityId,
    /// Readable by members only.
    pub private: bool,
    /// May push.
    pub committers: BTreeSet<IdentityId>,
    /// May read when private.
    pub readers: BTreeSet<IdentityId>,
    /// Preferred replicator nodes.
    pub replicators: BTreeSet<NodeId>,
    /// The branch clones check out (a name without `refs/heads/`), when set on chain.
    pub default_branch: Option<String>,
    /// Ref rules by pattern: who may move the refs a pattern names.
    pub rules: BTreeMap<String, RefRule>,
}

/// A ref rule: the identities that may move the refs its pattern names, and how many
/// distinct ones must sign each update.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RefRule {
    /// Who may sign.
    pub signers: BTreeSet<IdentityId>,
    /// Signatures each update needs (at least 1, at most the number of signers).
    pub threshold: u8,
}

/// Whether ref `name` matches rule `pattern`: the same bytes, where `*` in the
/// pattern stands for any run of bytes without `/`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Greedy matching with one backtrack point: the last `*` seen.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star
            && n[sj] != b'/'
        {
            // Let the `*` take one more byte (never a `/`), then try again.
            star = Some((si, sj + 1));
            i = si + 1;
            j = sj + 1;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|b| *b == b'*')
}

/// One state change, decoded from one contract log.
#[allow(missing_docs)] // the fields are the named event's fields
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Stake parameters set.
    Params(Params),
    /// An operator registered.
    OperatorRegistered {
        operator: Address,
        node_key: NodeId,
        endpoint: String,
        stake: U256,
    },
    /// An operator moved to a new node key.
    NodeKeyChanged { operator: Address, node_key: NodeId },
    /// An operator's endpoint changed.
    EndpointChanged { operator: Address, endpoint: String },
    /// An account's active stake is now `stake`.
    Stake {
        account: Address,
        role: StakeRole,
        stake: U256,
    },
    /// An account's unbonding stake is now `unbonding`.
    Unbonding {
        account: Address,
        role: StakeRole,
        unbonding: U256,
    },
    /// An identity was minted.
    IdentityMinted {
        id: IdentityId,
        holder: Address,
        handle: String,
    },
    /// An identity token moved to `holder` (its keys are cleared by `KeysCleared`).
    IdentityTransferred { id: IdentityId, holder: Address },
    /// A key was added to an identity.
    KeyAdded { id: IdentityId, key: Key },
    /// A key was revoked.
    KeyRevoked { id: IdentityId, key: Key },
    /// All keys of an identity were dropped.
    KeysCleared { id: IdentityId },
    /// A repo was created.
    RepoCreated {
        id: RepoId,
        holder: Address,
        name: String,
        owner_identity: IdentityId,
        private: bool,
    },
    /// A repo token moved to `holder`.
    RepoTransferred { id: RepoId, holder: Address },
    /// A repo's owner identity changed.
    RepoOwnerChanged {
        id: RepoId,
        owner_identity: IdentityId,
    },
    /// A repo became private or public.
    RepoVisibility { id: RepoId, private: bool },
    /// An identity became a member of a repo.
    MemberAdded {
        repo: RepoId,
        identity: IdentityId,
        role: Member,
    },
    /// An identity stopped being a member of a repo.
    MemberRemoved {
        repo: RepoId,
        identity: IdentityId,
        role: Member,
    },
    /// A node became a preferred replicator of a repo.
    ReplicatorAdded { repo: RepoId, node: NodeId },
    /// A node stopped being a preferred replicator.
    ReplicatorRemoved { repo: RepoId, node: NodeId },
    /// A repo was burned.
    RepoBurned { id: RepoId },
    /// A repo's default branch was set (`None`: cleared).
    DefaultBranch { id: RepoId, branch: Option<String> },
    /// A ref rule was set, replacing any for the same pattern.
    RefRuleSet {
        repo: RepoId,
        pattern: String,
        rule: RefRule,
    },
    /// A ref rule was removed.
    RefRuleRemoved { repo: RepoId, pattern: String },
}

/// Everything the contracts say that the node needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Stake parameters.
    pub params: Params,
    /// Registered operators by address.
    pub operators: BTreeMap<Address, Operator>,
    /// Operator address by node key.
    pub node_keys: BTreeMap<NodeId, Address>,
    /// Caller stake by address.
    pub callers: BTreeMap<Address, Balance>,
    /// Identities by id.
    pub identities: BTreeMap<IdentityId, Identity>,
    /// Identity id by key.
    pub keys: BTreeMap<Key, IdentityId>,
    /// Repos by id.
    pub repos: BTreeMap<RepoId, Repo>,
    /// Repo id by name.
    pub repo_names: BTreeMap<String, RepoId>,
}

impl State {
    /// The operator whose node key is `node`.
    pub fn operator_by_node(&self, node: &NodeId) -> Option<(&Address, &Operator)> {
        let addr = self.node_keys.get(node)?;
        self.operators.get_key_value(addr)
    }

    /// The repo named `name`.
    pub fn repo_by_name(&self, name: &str) -> Option<(RepoId, &Repo)> {
        let id = *self.repo_names.get(name)?;
        Some((id, self.repos.get(&id)?))
    }

    /// The identity with handle `handle`.
    pub fn identity_by_handle(&self, handle: &str) -> Option<(IdentityId, &Identity)> {
        self.identities
            .iter()
            .find(|(_, i)| i.handle == handle)
            .map(|(id, i)| (*id, i))
    }

    fn balance(&mut self, account: Address, role: StakeRole) -> Option<&mut Balance> {
        match role {
            StakeRole::Operator => self.operators.get_mut(&account).map(|op| &mut op.balance),
            StakeRole::Caller => Some(self.callers.entry(account).or_default()),
        }
    }

    /// Applies one change. Changes come from a contract that already enforced its
    /// rules, so one that refers to something unknown (which only a log out of order
    /// could cause) is skipped rather than trusted.
    pub fn apply(&mut self, change: Change) {
        match change {
            Change::Params(p) => self.params = p,
            Change::OperatorRegistered {
                operator,
                node_key,
                endpoint,
                stake,
            } => {
                self.node_keys.insert(node_key, operator);
                let balance = Balance {
                    stake,
                    unbonding: U256::ZERO,
                };
                self.operators.insert(
                    operator,
                    Operator {
                        node_key,
                        endpoint,
                        balance,
                    },
                );
            }
            Change::NodeKeyChanged { operator, node_key } => {
                if let Some(op) = self.operators.get_mut(&operator) {
                    self.node_keys.remove(&op.node_key);
                    op.node_key = node_key;
                    self.node_keys.insert(node_key, operator);
                }
            }
            Change::EndpointChanged { operator, endpoint } => {
                if let Some(op) = self.operators.get_mut(&operator) {
                    op.endpoint = endpoint;
                }
            }
            Change::Stake {
                account,
                role,
                stake,
            } => {
                if let Some(b) = self.balance(account, role) {
                    b.stake = stake;
                }
            }
            Change::Unbonding {
                account,
                role,
                unbonding,
            } => {
                if let Some(b) = self.balance(account, role) {
                    b.unbonding = unbonding;
                }
            }
            Change::IdentityMinted { id, holder, handle } => {
                self.identities.insert(
                    id,
                    Identity {
                        handle,
                        holder,
                        keys: Vec::new(),
                    },
                );
            }
            Change::IdentityTransferred { id, holder } => {
                if let Some(i) = self.identities.get_mut(&id) {
                    i.holder = holder;
                }
            }
            Change::KeyAdded { id, key } => {
                if let Some(i) = self.identities.get_mut(&id) {
                    i.keys.push(key);
                    self.keys.insert(key, id);
                }
            }
            Change::KeyRevoked { id, key } => {
                if let Some(i) = self.identities.get_mut(&id) {
                    i.keys.retain(|k| *k != key);
                    self.keys.remove(&key);
                }
            }
            Change::KeysCleared { id } => {
                if let Some(i) = self.identities.get_mut(&id) {
                    for key in i.keys.drain(..) {
                        self.keys.remove(&key);
                    }
                }
            }
            Change::RepoCreated {
                id,
                holder,
                name,
                owner_identity,
                private,
            } => {
                self.repo_names.insert(name.clone(), id);
                self.repos.insert(
                    id,
                    Repo {
                        name,
                        holder,
                        owner_identity,
                        private,
                        committers: BTreeSet::new(),
                        readers: BTreeSet::new(),
                        replicators: BTreeSet::new(),
                        default_branch: None,
                        rules: BTreeMap::new(),
                    },
                );
            }
            Change::RepoTransferred { id, holder } => {
                if let Some(r) = self.repos.get_mut(&id) {
                    r.holder = holder;
                }
            }
            Change::RepoOwnerChanged { id, owner_identity } => {
                if let Some(r) = self.repos.get_mut(&id) {
                    r.owner_identity = owner_identity;
                }
            }
            Change::RepoVisibility { id, private } => {
                if let Some(r) = self.repos.get_mut(&id) {
                    r.private = private;
                }
            }
            Change::MemberAdded {
                repo,
                identity,
                role,
            } => {
                if let Some(r) = self.repos.get_mut(&repo) {
                    r.members(role).insert(identity);
                }
            }
            Change::MemberRemoved {
                repo,
                identity,
                role,
            } => {
                if let Some(r) = self.repos.get_mut(&repo) {
                    r.members(role).remove(&identity);
                }
            }
            Change::ReplicatorAdded { repo, node } => {
                if let Some(r) = self.repos.get_mut(&repo) {
                    r.replicators.insert(node);
                }
            }
            Change::ReplicatorRemoved { repo, node } => {
                if let Some(r) = self.repos.get_mut(&repo) {
                    r.replicators.remove(&node);
                }
            }
            Change::RepoBurned { id } => {
                if let Some(r) = self.repos.remove(&id) {
                    self.repo_names.remove(&r.name);
                }
            }
            Change::DefaultBranch { id, branch } => {
                if let Some(r) = self.repos.get_mut(&id) {
                    r.default_branch = branch;
                }
            }
            Change::RefRuleSet {
                repo,
                pattern,
                rule,
            } => {
                if let Some(r) = self.repos.get_mut(&repo) {
                    r.rules.insert(pattern, rule);
                }
            }
            Change::RefRuleRemoved { repo, pattern } => {
                if let Some(r) = self.repos.get_mut(&repo) {
                    r.rules.remove(&pattern);
                }
            }
        }
    }
}

impl Repo {
    /// The rule that governs ref `name`: the rule of that exact name, else the
    /// matching pattern with the most bytes besides `*` (of equals, the first in byte
    /// order), so that every node picks the same one.
    pub fn rule_for(&self, name: &str) -> Option<(&str, &RefRule)> {
        if let Some((p, r)) = self.rules.get_key_value(name) {
            return Some((p, r));
        }
        let literal = |p: &str| p.bytes().filter(|b| *b != b'*').count();
        self.rules
            .iter()
            .filter(|(p, _)| pattern_matches(p, name))
            .fold(
                None,
                |best: Option<(&String, &RefRule)>, (p, r)| match best {
                    Some((b, _)) if literal(b) >= literal(p) => best,
                    _ => Some((p, r)),
                },
            )
            .map(|(p, r)| (p.as_str(), r))
    }

    fn members(&mut self, role: Member) -> &mut BTreeSet<IdentityId> {
        match role {
            Member::Committer => &mut self.committers,
            Member::Reader => &mut self.readers,
        }
    }
}
