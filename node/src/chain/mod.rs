//! Everything that talks to the chain: contract bindings, the deployment file, the log
//! syncer that builds the ACL, and the transactions the CLI sends.
//!
//! Data leaves this module as [`crate::acl::Change`]s applied to the ACL (by
//! [`Syncer`]), and as transaction receipts and view results (by [`Client`]).

mod bindings;
mod client;
mod decode;
pub mod sync;

use std::path::Path;

use alloy::{
    network::EthereumWallet,
    primitives::{Address, U256},
    providers::{DynProvider, Provider, ProviderBuilder},
    signers::local::PrivateKeySigner,
};
use serde::{Deserialize, Serialize};

pub use bindings::{IdentityToken, RepoToken, StakeRegistry};
pub use client::{Client, IdentityView, OperatorView, RepoView};
pub use decode::{DecodeError, decode};
pub use sync::{Status, Syncer};

/// What went wrong talking to the chain.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot reach the chain RPC at {url}: {reason}; is the chain node running and the URL right?"
    )]
    Unreachable { url: String, reason: String },
    #[error("RPC call {call} failed: {reason}")]
    Rpc { call: &'static str, reason: String },
    #[error(
        "chain id mismatch: the RPC at {url} serves chain {actual}, but the deployment file {deployment} is for chain {expected}"
    )]
    ChainIdMismatch {
        url: String,
        actual: u64,
        expected: u64,
        deployment: String,
    },
    #[error(
        "cannot read deployment file {path}: {reason}; deploy with `hanzo-node deploy` or point --chain.deployment at it"
    )]
    Deployment { path: String, reason: String },
    #[error("{0}")]
    Reverted(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("checkpoint write task failed: {0}")]
    Task(String),
}

/// Where the contracts live: the deployment file the node reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// Chain id the contracts are deployed on.
    pub chain_id: u64,
    /// StakeRegistry address.
    pub stake_registry: Address,
    /// IdentityToken address.
    pub identity_token: Address,
    /// RepoToken address.
    pub repo_token: Address,
    /// Block of the first deployment transaction: sync starts here.
    pub block: u64,
}

impl Deployment {
    /// Reads a deployment file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let fail = |reason: String| Error::Deployment {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
        if text.len() > 64 * 1024 {
            return Err(fail("larger than 64 KiB".into()));
        }
        serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
    }

    /// Writes the deployment file.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let fail = |reason: String| Error::Deployment {
            path: path.display().to_string(),
            reason,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| fail(e.to_string()))?;
        std::fs::write(path, text + "\n").map_err(|e| fail(e.to_string()))
    }

    /// A short id of this deployment: `<chain id>:<registry address>`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.chain_id, self.stake_registry)
    }

    /// The three contract addresses.
    pub fn addresses(&self) -> [Address; 3] {
        [self.stake_registry, self.identity_token, self.repo_token]
    }
}

/// Stake parameters for a new deployment.
#[derive(Clone, Debug)]
pub struct DeployParams {
    /// Minimum operator stake, wei.
    pub min_operator_stake: U256,
    /// Minimum caller stake, wei.
    pub min_caller_stake: U256,
    /// Unbonding period, seconds.
    pub unbonding_period: u64,
}

/// Connects to `url` (http or ws), optionally signing with `signer`.
pub async fn connect(url: &str, signer: Option<PrivateKeySigner>) -> Result<DynProvider, Error> {
    let unreachable = |e: &dyn std::fmt::Display| Error::Unreachable {
        url: url.to_owned(),
        reason: e.to_string(),
    };
    let provider = match signer {
        Some(s) => ProviderBuilder::new()
            .wallet(EthereumWallet::from(s))
            .connect(url)
            .await
            .map_err(|e| unreachable(&e))?
            .erased(),
        None => ProviderBuilder::new()
            .connect(url)
            .await
            .map_err(|e| unreachable(&e))?
            .erased(),
    };
    Ok(provider)
}

/// Loads the deployment file at `deployment_path`, connects to `url` (signing with
/// `signer`, if any) and checks that the endpoint serves the deployment's chain.
pub async fn open(
    url: &str,
    signer: Option<PrivateKeySigner>,
    deployment_path: &Path,
) -> Result<(DynProvider, Deployment), Error> {
    let deployment = Deployment::load(deployment_path)?;
    let provider = connect(url, signer).await?;
    let actual = provider
        .get_chain_id()
        .await
        .map_err(|e| Error::Unreachable {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    if actual != deployment.chain_id {
        return Err(Error::ChainIdMismatch {
            url: url.to_owned(),
            actual,
            expected: deployment.chain_id,
            deployment: deployment_path.display().to_string(),
        });
    }
    Ok((provider, deployment))
}

/// Deploys the three contracts from `provider`'s signer, with `admin` as the registry's
/// admin and slasher.
pub async fn deploy(
    provider: &DynProvider,
    admin: Address,
    params: &DeployParams,
) -> Result<Deployment, Error> {
    let rpc = |call: &'static str| {
        move |e: alloy::contract::Error| Error::Rpc {
            call,
            reason: e.to_string(),
        }
    };
    let receipt = StakeRegistry::deploy_builder(
        provider.clone(),
        params.min_operator_stake,
        params.min_caller_stake,
        params.unbonding_period,
        admin,
    )
    .send()
    .await
    .map_err(rpc("deploy StakeRegistry"))?
    .get_receipt()
    .await
    .map_err(|e| Error::Rpc {
        call: "deploy StakeRegistry",
        reason: e.to_string(),
    })?;
    let (Some(registry), Some(block)) = (receipt.contract_address, receipt.block_number) else {
        return Err(Error::Rpc {
            call: "deploy StakeRegistry",
            reason: "receipt has no contract address or block".into(),
        });
    };
    let identities = IdentityToken::deploy(provider.clone())
        .await
        .map_err(rpc("deploy IdentityToken"))?;
    let repos = RepoToken::deploy(provider.clone(), *identities.address())
        .await
        .map_err(rpc("deploy RepoToken"))?;
    let chain_id = provider.get_chain_id().await.map_err(|e| Error::Rpc {
        call: "eth_chainId",
        reason: e.to_string(),
    })?;
    Ok(Deployment {
        chain_id,
        stake_registry: registry,
        identity_token: *identities.address(),
        repo_token: *repos.address(),
        block,
    })
}
