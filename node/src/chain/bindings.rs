//! Contract bindings, generated from the compiled artifacts in `node/contracts/`
//! (written by `scripts/export-artifacts`).
#![allow(missing_docs, clippy::too_many_arguments)]

alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    StakeRegistry,
    "contracts/StakeRegistry.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    IdentityToken,
    "contracts/IdentityToken.json"
);
alloy::sol!(
    #[sol(rpc)]
    #[derive(Debug, PartialEq, Eq)]
    RepoToken,
    "contracts/RepoToken.json"
);
