//! Contract logs → ACL [`Change`]s. Every event carries what the ACL needs, so no log
//! costs an extra call.

use alloy::{
    primitives::{Address, B256, Log, U256},
    sol_types::SolEventInterface,
};

use super::{
    Deployment,
    bindings::{
        IdentityToken::{self, IdentityTokenEvents as Id},
        RepoToken::RepoTokenEvents as Rp,
        StakeRegistry::StakeRegistryEvents as Sr,
    },
};
use crate::{
    acl::{Change, Key, Member, Params, RefRule, StakeRole},
    keys::{NodeId, SshKey},
};

/// A log the node cannot make sense of.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode log {index} of block {block}: {reason}")]
pub struct DecodeError {
    block: u64,
    index: u64,
    reason: String,
}

/// Decodes one log of the deployment's contracts into the changes it makes (most make
/// one; events the ACL does not need make none).
pub fn decode(d: &Deployment, log: &alloy::rpc::types::Log) -> Result<Vec<Change>, DecodeError> {
    let fail = |reason: String| DecodeError {
        block: log.block_number.unwrap_or_default(),
        index: log.log_index.unwrap_or_default(),
        reason,
    };
    let inner: &Log = &log.inner;
    let changes = if inner.address == d.stake_registry {
        match Sr::decode_log(inner) {
            Ok(ev) => stake_registry(ev.data).map_err(fail)?,
            Err(_) => Vec::new(),
        }
    } else if inner.address == d.identity_token {
        match Id::decode_log(inner) {
            Ok(ev) => identity_token(ev.data).map_err(fail)?,
            Err(_) => Vec::new(),
        }
    } else if inner.address == d.repo_token {
        match Rp::decode_log(inner) {
            Ok(ev) => repo_token(ev.data).map_err(fail)?,
            Err(_) => Vec::new(),
        }
    } else {
        Vec::new()
    };
    Ok(changes)
}

fn id(v: U256) -> Result<u64, String> {
    u64::try_from(v).map_err(|_| format!("token id {v} does not fit 64 bits"))
}

fn role(v: u8) -> Result<StakeRole, String> {
    match v {
        0 => Ok(StakeRole::Operator),
        1 => Ok(StakeRole::Caller),
        _ => Err(format!("unknown stake role {v}")),
    }
}

fn node(key: B256) -> NodeId {
    NodeId(key.0)
}

/// Both balances of an account after an unstake request or a slash.
fn balances(account: Address, role: StakeRole, stake: U256, unbonding: U256) -> Vec<Change> {
    vec![
        Change::Stake {
            account,
            role,
            stake,
        },
        Change::Unbonding {
            account,
            role,
            unbonding,
        },
    ]
}

fn stake_registry(ev: Sr) -> Result<Vec<Change>, String> {
    Ok(match ev {
        Sr::ParamsChanged(e) => vec![Change::Params(Params {
            min_operator_stake: e.minOperatorStake,
            min_caller_stake: e.minCallerStake,
            unbonding_period: e.unbondingPeriod,
        })],
        Sr::OperatorRegistered(e) => vec![Change::OperatorRegistered {
            operator: e.operator,
            node_key: node(e.nodeKey),
            endpoint: e.endpoint,
            stake: e.stake,
        }],
        Sr::NodeKeyChanged(e) => {
            vec![Change::NodeKeyChanged {
                operator: e.operator,
                node_key: node(e.newNodeKey),
            }]
        }
        Sr::EndpointChanged(e) => {
            vec![Change::EndpointChanged {
                operator: e.operator,
                endpoint: e.endpoint,
            }]
        }
        Sr::StakeDeposited(e) => {
            vec![Change::Stake {
                account: e.account,
                role: role(e.role)?,
                stake: e.stake,
            }]
        }
        Sr::UnstakeRequested(e) => balances(e.account, role(e.role)?, e.stake, e.unbonding),
        Sr::Withdrawn(e) => {
            vec![Change::Unbonding {
                account: e.account,
                role: role(e.role)?,
                unbonding: U256::ZERO,
            }]
        }
        Sr::Slashed(e) => balances(e.account, role(e.role)?, e.stake, e.unbonding),
        _ => Vec::new(),
    })
}

/// The key an `IdentityToken` event names.
pub fn identity_key(kind: u8, key: B256) -> Result<Key, String> {
    match kind {
        0 => Ok(Key::Ssh(SshKey(key.0))),
        1 => Ok(Key::Eth(Address::from_word(key))),
        _ => Err(format!("unknown key kind {kind}")),
    }
}

fn identity_token(ev: Id) -> Result<Vec<Change>, String> {
    Ok(match ev {
        Id::IdentityMinted(e) => {
            vec![Change::IdentityMinted {
                id: id(e.id)?,
                holder: e.holder,
                handle: e.handle,
            }]
        }
        // Mints are covered by IdentityMinted; identities are never burned.
        Id::Transfer(IdentityToken::Transfer { from, to, tokenId })
            if !from.is_zero() && !to.is_zero() =>
        {
            vec![Change::IdentityTransferred {
                id: id(tokenId)?,
                holder: to,
            }]
        }
        Id::KeyAdded(e) => vec![Change::KeyAdded {
            id: id(e.id)?,
            key: identity_key(e.kind, e.key)?,
        }],
        Id::KeyRevoked(e) => {
            vec![Change::KeyRevoked {
                id: id(e.id)?,
                key: identity_key(e.kind, e.key)?,
            }]
        }
        Id::KeysCleared(e) => vec![Change::KeysCleared { id: id(e.id)? }],
        _ => Vec::new(),
    })
}

fn member(v: u8) -> Result<Member, String> {
    match v {
        0 => Ok(Member::Committer),
        1 => Ok(Member::Reader),
        _ => Err(format!("unknown member role {v}")),
    }
}

fn repo_token(ev: Rp) -> Result<Vec<Change>, String> {
    Ok(match ev {
        Rp::RepoCreated(e) => vec![Change::RepoCreated {
            id: id(e.repoId)?,
            holder: e.holder,
            name: e.name,
            owner_identity: id(e.ownerIdentity)?,
            private: e.isPrivate,
        }],
        // Mints are covered by RepoCreated, burns by RepoBurned.
        Rp::Transfer(e) if !e.from.is_zero() && !e.to.is_zero() => {
            vec![Change::RepoTransferred {
                id: id(e.tokenId)?,
                holder: e.to,
            }]
        }
        Rp::OwnerIdentityChanged(e) => {
            vec![Change::RepoOwnerChanged {
                id: id(e.repoId)?,
                owner_identity: id(e.ownerIdentity)?,
            }]
        }
        Rp::VisibilityChanged(e) => {
            vec![Change::RepoVisibility {
                id: id(e.repoId)?,
                private: e.isPrivate,
            }]
        }
        Rp::MemberAdded(e) => vec![Change::MemberAdded {
            repo: id(e.repoId)?,
            identity: id(e.identity)?,
            role: member(e.role)?,
        }],
        Rp::MemberRemoved(e) => vec![Change::MemberRemoved {
            repo: id(e.repoId)?,
            identity: id(e.identity)?,
            role: member(e.role)?,
        }],
        Rp::ReplicatorAdded(e) => {
            vec![Change::ReplicatorAdded {
                repo: id(e.repoId)?,
                node: node(e.nodeKey),
            }]
        }
        Rp::ReplicatorRemoved(e) => {
            vec![Change::ReplicatorRemoved {
                repo: id(e.repoId)?,
                node: node(e.nodeKey),
            }]
        }
        Rp::RepoBurned(e) => vec![Change::RepoBurned { id: id(e.repoId)? }],
        Rp::DefaultBranchChanged(e) => vec![Change::DefaultBranch {
            id: id(e.repoId)?,
            branch: (!e.branch.is_empty()).then_some(e.branch),
        }],
        Rp::RefRuleSet(e) => vec![Change::RefRuleSet {
            repo: id(e.repoId)?,
            pattern: e.pattern,
            rule: RefRule {
                signers: e.signers.into_iter().map(id).collect::<Result<_, _>>()?,
                threshold: e.threshold,
            },
        }],
        Rp::RefRuleRemoved(e) => vec![Change::RefRuleRemoved {
            repo: id(e.repoId)?,
            pattern: e.pattern,
        }],
        _ => Vec::new(),
    })
}
