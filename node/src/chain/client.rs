//! Transactions and reads for the CLI: stake, identities, repos. Reverts come back as
//! the contract's custom error, explained in words.

use alloy::{
    contract::{CallBuilder, CallDecoder},
    primitives::{Address, B256, U256},
    providers::{DynProvider, Provider},
    rpc::types::{Filter, TransactionReceipt},
    sol_types::SolInterface,
};
use serde::Serialize;

use super::{
    Deployment, Error,
    bindings::{
        IdentityToken::{IdentityTokenErrors as IdE, IdentityTokenInstance},
        RepoToken::{RepoTokenErrors as RpE, RepoTokenInstance},
        StakeRegistry::{StakeRegistryErrors as SrE, StakeRegistryInstance},
    },
    decode,
};
use crate::acl::{Key, Member, StakeRole, State, eth};

/// How long to wait for a transaction to be mined.
const RECEIPT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Blocks per `eth_getLogs` call of [`Client::snapshot`].
const SNAPSHOT_BLOCK_RANGE: u64 = 10_000;

/// A connected client of the deployment's contracts.
pub struct Client {
    provider: DynProvider,
    deployment: Deployment,
    registry: StakeRegistryInstance<DynProvider>,
    identities: IdentityTokenInstance<DynProvider>,
    repos: RepoTokenInstance<DynProvider>,
}

/// An operator as the registry holds it.
#[derive(Debug, Serialize)]
pub struct OperatorView {
    /// Operator address.
    pub address: Address,
    /// Registered node key (zero if not registered).
    pub node_key: B256,
    /// Endpoint hint.
    pub endpoint: String,
    /// Active stake, wei.
    pub stake: U256,
    /// Unbonding stake, wei.
    pub unbonding: U256,
    /// When the unbonding stake can be withdrawn (unix seconds; 0 if none).
    pub release_at: u64,
    /// Registered with at least the minimum stake.
    pub active: bool,
    /// The minimum, wei.
    pub minimum: U256,
}

/// An identity and its keys.
#[derive(Debug, Serialize)]
pub struct IdentityView {
    /// Token id.
    pub id: u64,
    /// Handle.
    pub handle: String,
    /// Token holder.
    pub holder: Address,
    /// SSH keys as OpenSSH lines with fingerprints, and addresses.
    pub keys: Vec<String>,
}

/// A repo and its members, as of the chain head.
#[derive(Debug, Serialize)]
pub struct RepoView {
    /// Token id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Token holder.
    pub holder: Address,
    /// Owner identity handle.
    pub owner: String,
    /// Private repo.
    pub private: bool,
    /// Committer handles.
    pub committers: Vec<String>,
    /// Reader handles.
    pub readers: Vec<String>,
    /// Preferred replicator node keys.
    pub replicators: Vec<String>,
    /// The branch clones check out, when set on chain.
    pub default_branch: Option<String>,
    /// Ref rules.
    pub rules: Vec<RuleView>,
}

/// A ref rule as `hanzo-node repo show` prints it.
#[derive(Debug, serde::Serialize)]
pub struct RuleView {
    /// Ref pattern.
    pub pattern: String,
    /// Signer handles.
    pub signers: Vec<String>,
    /// Signatures an update needs.
    pub threshold: u8,
}

fn role_u8(role: StakeRole) -> u8 {
    match role {
        StakeRole::Operator => 0,
        StakeRole::Caller => 1,
    }
}

impl Client {
    /// A client of `deployment` through `provider` (which signs, for transactions).
    pub fn new(provider: DynProvider, deployment: Deployment) -> Self {
        Self {
            registry: StakeRegistryInstance::new(deployment.stake_registry, provider.clone()),
            identities: IdentityTokenInstance::new(deployment.identity_token, provider.clone()),
            repos: RepoTokenInstance::new(deployment.repo_token, provider.clone()),
            provider,
            deployment,
        }
    }

    async fn send<D: CallDecoder>(
        &self,
        what: &str,
        call: CallBuilder<&DynProvider, D>,
    ) -> Result<TransactionReceipt, Error> {
        let pending = call.send().await.map_err(|e| revert(what, &e))?;
        let receipt = pending
            .with_timeout(Some(RECEIPT_TIMEOUT))
            .get_receipt()
            .await
            .map_err(|e| Error::Rpc {
                call: "eth_getTransactionReceipt",
                reason: e.to_string(),
            })?;
        if !receipt.status() {
            return Err(Error::Reverted(format!(
                "{what}: transaction {} reverted",
                receipt.transaction_hash
            )));
        }
        Ok(receipt)
    }

    async fn view<D: CallDecoder>(
        &self,
        what: &str,
        call: CallBuilder<&DynProvider, D>,
    ) -> Result<D::CallOutput, Error> {
        call.call().await.map_err(|e| revert(what, &e))
    }

    // ---- stake ----

    /// Registers the sender as the operator of `node_key`.
    pub async fn register_operator(
        &self,
        node_key: B256,
        endpoint: &str,
        stake: U256,
    ) -> Result<TransactionReceipt, Error> {
        self.send(
            "register",
            self.registry
                .register(node_key, endpoint.to_owned())
                .value(stake),
        )
        .await
    }

    /// Adds operator stake.
    pub async fn deposit_operator(&self, amount: U256) -> Result<TransactionReceipt, Error> {
        self.send("deposit", self.registry.depositOperator().value(amount))
            .await
    }

    /// Adds caller stake.
    pub async fn deposit_caller(&self, amount: U256) -> Result<TransactionReceipt, Error> {
        self.send("deposit", self.registry.deposit().value(amount))
            .await
    }

    /// Starts unbonding `amount`.
    pub async fn request_unstake(
        &self,
        role: StakeRole,
        amount: U256,
    ) -> Result<TransactionReceipt, Error> {
        self.send(
            "unstake",
            self.registry.requestUnstake(role_u8(role), amount),
        )
        .await
    }

    /// Withdraws unbonded stake.
    pub async fn withdraw(&self, role: StakeRole) -> Result<TransactionReceipt, Error> {
        self.send("withdraw", self.registry.withdraw(role_u8(role)))
            .await
    }

    /// Slashes `account` (slasher role only).
    pub async fn slash(
        &self,
        account: Address,
        role: StakeRole,
        amount: U256,
        reason: &str,
    ) -> Result<TransactionReceipt, Error> {
        self.send(
            "slash",
            self.registry
                .slash(account, role_u8(role), amount, reason.to_owned()),
        )
        .await
    }

    /// Sets the operator's endpoint.
    pub async fn set_endpoint(&self, endpoint: &str) -> Result<TransactionReceipt, Error> {
        self.send(
            "set endpoint",
            self.registry.setEndpoint(endpoint.to_owned()),
        )
        .await
    }

    /// The stake of `address` for `role`.
    pub async fn stake(&self, address: Address, role: StakeRole) -> Result<OperatorView, Error> {
        let (node_key, endpoint, stake, unbonding, release_at, minimum) = match role {
            StakeRole::Operator => {
                let op = self
                    .view("operator", self.registry.operator(address))
                    .await?;
                let min = self
                    .view("minOperatorStake", self.registry.minOperatorStake())
                    .await?;
                (
                    op.nodeKey,
                    op.endpoint,
                    op.stake,
                    op.unbonding,
                    op.releaseAt,
                    min,
                )
            }
            StakeRole::Caller => {
                let c = self.view("caller", self.registry.caller(address)).await?;
                let min = self
                    .view("minCallerStake", self.registry.minCallerStake())
                    .await?;
                (
                    B256::ZERO,
                    String::new(),
                    c.stake,
                    c.unbonding,
                    c.releaseAt,
                    min,
                )
            }
        };
        let registered = role == StakeRole::Caller || !node_key.is_zero();
        let active = registered && stake >= minimum && !stake.is_zero();
        Ok(OperatorView {
            address,
            node_key,
            endpoint,
            stake,
            unbonding,
            release_at,
            active,
            minimum,
        })
    }

    // ---- identities ----

    /// The id of identity `handle`.
    pub async fn identity_id(&self, handle: &str) -> Result<U256, Error> {
        self.view(&format!("identity {handle}"), self.identities.idOfHandle(handle.to_owned()))
            .await
            .map_err(|_| Error::NotFound(format!("no identity with handle {handle:?}; mint it with `hanzo-node identity mint {handle}`")))
    }

    /// Mints identity `handle` to the sender.
    pub async fn mint_identity(&self, handle: &str) -> Result<u64, Error> {
        self.send("mint", self.identities.mint(handle.to_owned()))
            .await?;
        Ok(to_u64(self.identity_id(handle).await?))
    }

    /// Adds `key` to identity `handle`.
    pub async fn add_key(&self, handle: &str, key: &Key) -> Result<TransactionReceipt, Error> {
        let id = self.identity_id(handle).await?;
        let (kind, word) = key_word(key);
        self.send("add key", self.identities.addKey(id, kind, word))
            .await
    }

    /// Revokes `key` from identity `handle`.
    pub async fn revoke_key(&self, handle: &str, key: &Key) -> Result<TransactionReceipt, Error> {
        let id = self.identity_id(handle).await?;
        let (kind, word) = key_word(key);
        self.send("revoke key", self.identities.revokeKey(id, kind, word))
            .await
    }

    /// Identity `handle` and its keys.
    pub async fn identity(&self, handle: &str) -> Result<IdentityView, Error> {
        let id = self.identity_id(handle).await?;
        let holder = self.view("ownerOf", self.identities.ownerOf(id)).await?;
        let keys = self.view("keysOf", self.identities.keysOf(id)).await?;
        let keys = keys
            .into_iter()
            .filter_map(|k| decode::identity_key(k.kind, k.key).ok())
            .map(|k| match k {
                Key::Ssh(s) => format!("{} ({})", s.to_line(), s.fingerprint()),
                Key::Eth(a) => a.to_string(),
            })
            .collect();
        Ok(IdentityView {
            id: to_u64(id),
            handle: handle.to_owned(),
            holder,
            keys,
        })
    }

    async fn handle_of(&self, identity: u64) -> Result<String, Error> {
        self.view("handleOf", self.identities.handleOf(U256::from(identity)))
            .await
    }

    // ---- repos ----

    async fn repo_id(&self, name: &str) -> Result<U256, Error> {
        self.view(&format!("repo {name}"), self.repos.idOfName(name.to_owned()))
            .await
            .map_err(|_| Error::NotFound(format!("no repo named {name:?}; create it with `hanzo-node repo create {name} --owner <handle>`")))
    }

    /// Creates repo `name` owned by identity `owner`.
    pub async fn create_repo(&self, name: &str, owner: &str, private: bool) -> Result<u64, Error> {
        let owner = self.identity_id(owner).await?;
        self.send(
            "create repo",
            self.repos.create(name.to_owned(), owner, private),
        )
        .await?;
        Ok(to_u64(self.repo_id(name).await?))
    }

    /// Burns repo `name`'s token: every node removes the repo.
    pub async fn burn_repo(&self, name: &str) -> Result<TransactionReceipt, Error> {
        let id = self.repo_id(name).await?;
        self.send("burn repo", self.repos.burn(id)).await
    }

    /// Adds (or with `add == false` removes) identity `handle` as `role` of repo `name`.
    pub async fn set_member(
        &self,
        name: &str,
        handle: &str,
        role: Member,
        add: bool,
    ) -> Result<TransactionReceipt, Error> {
        let repo = self.repo_id(name).await?;
        let identity = self.identity_id(handle).await?;
        let role = match role {
            Member::Committer => 0,
            Member::Reader => 1,
        };
        if add {
            self.send("add member", self.repos.addMember(repo, identity, role))
                .await
        } else {
            self.send(
                "remove member",
                self.repos.removeMember(repo, identity, role),
            )
            .await
        }
    }

    /// Points repo `name`'s default branch at `branch` (empty: none set).
    pub async fn set_default_branch(
        &self,
        name: &str,
        branch: &str,
    ) -> Result<TransactionReceipt, Error> {
        let id = self.repo_id(name).await?;
        self.send(
            "set default branch",
            self.repos.setDefaultBranch(id, branch.to_owned()),
        )
        .await
    }

    /// Sets repo `name`'s rule for `pattern`: `threshold` of identities `signers`
    /// (handles) must sign each update of a matching ref.
    pub async fn set_ref_rule(
        &self,
        name: &str,
        pattern: &str,
        signers: &[String],
        threshold: u8,
    ) -> Result<TransactionReceipt, Error> {
        let id = self.repo_id(name).await?;
        let mut ids = Vec::with_capacity(signers.len());
        for handle in signers {
            ids.push(self.identity_id(handle).await?);
        }
        self.send(
            "set ref rule",
            self.repos
                .setRefRule(id, pattern.to_owned(), ids, threshold),
        )
        .await
    }

    /// Removes repo `name`'s rule for `pattern`.
    pub async fn remove_ref_rule(
        &self,
        name: &str,
        pattern: &str,
    ) -> Result<TransactionReceipt, Error> {
        let id = self.repo_id(name).await?;
        self.send(
            "remove ref rule",
            self.repos.removeRefRule(id, pattern.to_owned()),
        )
        .await
    }

    /// The whole ACL at the chain's head, replayed from the deployment's logs: for
    /// tools that have no node store (`hanzo-node resolve`, `git-remote-hanzo`).
    pub async fn snapshot(&self) -> Result<crate::acl::Snapshot, Error> {
        let rpc = |call: &'static str| {
            move |e: alloy::transports::TransportError| Error::Rpc {
                call,
                reason: e.to_string(),
            }
        };
        let head = self
            .provider
            .get_block_number()
            .await
            .map_err(rpc("eth_blockNumber"))?;
        let addresses = vec![
            self.deployment.stake_registry,
            self.deployment.identity_token,
            self.deployment.repo_token,
        ];
        let mut snapshot = crate::acl::Snapshot::default();
        // In ranges the usual RPC limits allow, as the syncer does.
        let mut from = self.deployment.block;
        while from <= head {
            let to = head.min(from + SNAPSHOT_BLOCK_RANGE - 1);
            let filter = Filter::new()
                .address(addresses.clone())
                .from_block(from)
                .to_block(to);
            let logs = self
                .provider
                .get_logs(&filter)
                .await
                .map_err(rpc("eth_getLogs"))?;
            snapshot.events_applied += logs.len() as u64;
            for log in &logs {
                for change in decode::decode(&self.deployment, log)? {
                    snapshot.state.apply(change);
                }
            }
            from = to + 1;
        }
        Ok(snapshot)
    }

    /// Repo `name` with its members, replayed from its own logs.
    pub async fn repo(&self, name: &str) -> Result<RepoView, Error> {
        let id = self.repo_id(name).await?;
        let holder = self.view("ownerOf", self.repos.ownerOf(id)).await?;
        let filter = Filter::new()
            .address(self.deployment.repo_token)
            .topic1(B256::from(id))
            .from_block(self.deployment.block);
        let logs = self
            .provider
            .get_logs(&filter)
            .await
            .map_err(|e| Error::Rpc {
                call: "eth_getLogs",
                reason: e.to_string(),
            })?;
        let mut state = State::default();
        for log in &logs {
            for change in decode::decode(&self.deployment, log)? {
                state.apply(change);
            }
        }
        let (_, repo) = state
            .repo_by_name(name)
            .ok_or_else(|| Error::NotFound(format!("repo {name:?} has no creation log")))?;
        let mut committers = Vec::new();
        for i in &repo.committers {
            committers.push(self.handle_of(*i).await?);
        }
        let mut readers = Vec::new();
        for i in &repo.readers {
            readers.push(self.handle_of(*i).await?);
        }
        let mut rules = Vec::new();
        for (pattern, rule) in &repo.rules {
            let mut signers = Vec::new();
            for i in &rule.signers {
                signers.push(self.handle_of(*i).await?);
            }
            rules.push(RuleView {
                pattern: pattern.clone(),
                signers,
                threshold: rule.threshold,
            });
        }
        Ok(RepoView {
            id: to_u64(id),
            name: repo.name.clone(),
            holder,
            owner: self.handle_of(repo.owner_identity).await?,
            private: repo.private,
            committers,
            readers,
            replicators: repo.replicators.iter().map(|n| n.to_string()).collect(),
            default_branch: repo.default_branch.clone(),
            rules,
        })
    }
}

fn key_word(key: &Key) -> (u8, B256) {
    match key {
        Key::Ssh(s) => (0, B256::from(s.0)),
        Key::Eth(a) => (1, a.into_word()),
    }
}

fn to_u64(v: U256) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Explains a failed call: the contract's custom error in words when there is one.
fn revert(what: &str, err: &alloy::contract::Error) -> Error {
    if let Some(data) = err.as_revert_data()
        && let Some(text) = explain(&data)
    {
        return Error::Reverted(format!("{what} refused: {text}"));
    }
    Error::Reverted(format!("{what} failed: {err}"))
}

fn explain(data: &[u8]) -> Option<String> {
    if let Ok(e) = SrE::abi_decode(data) {
        return Some(match e {
            SrE::StakeBelowMinimum(e) => format!(
                "stake {} is below the minimum {}",
                eth(e.stake),
                eth(e.minimum)
            ),
            SrE::InsufficientStake(e) => format!(
                "cannot take {}: only {} is staked",
                eth(e.requested),
                eth(e.available)
            ),
            SrE::StillUnbonding(e) => format!(
                "stake is still unbonding until unix time {} (now {}); withdraw after that",
                e.releaseAt, e.now_
            ),
            SrE::NothingToWithdraw(_) => "nothing to withdraw: request an unstake first".into(),
            SrE::AlreadyRegistered(e) => {
                format!("{} is already registered as an operator", e.operator)
            }
            SrE::NotRegistered(e) => format!(
                "{} is not a registered operator; run `hanzo-node operator register` first",
                e.operator
            ),
            SrE::NodeKeyTaken(e) => format!(
                "node key {} is already registered by {}",
                e.nodeKey, e.operator
            ),
            SrE::ZeroAmount(_) => "the amount must be above zero".into(),
            other => format!("{other:?}"),
        });
    }
    if let Ok(e) = IdE::abi_decode(data) {
        return Some(match e {
            IdE::HandleTaken(e) => format!("handle {:?} is taken by identity {}", e.handle, e.id),
            IdE::KeyTaken(e) => format!("that key already belongs to identity {}", e.id),
            IdE::NotHolder(e) => format!("{} does not hold identity {}", e.sender, e.id),
            IdE::KeyNotFound(e) => format!("identity {} does not have that key", e.id),
            IdE::InvalidName(e) => format!(
                "{:?} is not a valid handle: use 1-64 of a-z 0-9 - _ .",
                e.name
            ),
            other => format!("{other:?}"),
        });
    }
    if let Ok(e) = RpE::abi_decode(data) {
        return Some(match e {
            RpE::NameTaken(e) => format!("repo name {:?} is taken by repo {}", e.name, e.repoId),
            RpE::NotHolder(e) => format!("{} does not hold repo {}", e.sender, e.repoId),
            RpE::NotIdentityHolder(e) => {
                format!("{} does not hold identity {}", e.sender, e.identity)
            }
            RpE::AlreadyMember(e) => format!(
                "identity {} already has that role in repo {}",
                e.identity, e.repoId
            ),
            RpE::NotMember(e) => format!(
                "identity {} does not have that role in repo {}",
                e.identity, e.repoId
            ),
            RpE::InvalidName(e) => format!(
                "{:?} is not a valid repo name: use 1-64 of a-z 0-9 - _ .",
                e.name
            ),
            other => format!("{other:?}"),
        });
    }
    None
}
