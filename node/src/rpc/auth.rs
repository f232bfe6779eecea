//! Who is calling: Sign-In with Ethereum, session tokens, single-use nonces, the
//! caller's role and stake from the live ACL on every call, and per-caller rate
//! limits that grow with stake.
//!
//! A session token is `v2.<payload>.<mac>` (base64url): the address, when the session
//! began and when the token expires, the session's id and its scope, under an HMAC key
//! derived from the node key. It needs no state to check; stake is checked against
//! the ACL on each call anyway.
//!
//! A session's scope is every service, or what the sign-in message's EIP-5573 ReCap
//! granted on this node's URI: abilities such as `workloads/read` or `inference/use`
//! (with an optional `{"max_tokens": N}` budget for the session).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use alloy::primitives::{Address, U256};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use tonic::Status;

use super::{eip712, origins::Origins, siwe, siwe::Checks as _};
use crate::{
    acl::{Acl, Role, eth},
    bucket::Bucket,
    config::RpcConfig,
    keys::{NodeId, NodeKey},
    lock,
};

/// Most sign-in nonces waiting to be used at once.
const MAX_PENDING_NONCES: usize = 100_000;
/// Longest token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 256;
/// Bytes of a token's payload: address, began, expires, session id, abilities, budget.
const PAYLOAD_BYTES: usize = 20 + 8 + 8 + 8 + 2 + 8;

/// The abilities a ReCap may grant on this node, and the bit of each in a token.
const ABILITIES: [(&str, u16); 7] = [
    ("node/read", 1),
    ("repos/read", 1 << 1),
    ("workloads/read", 1 << 2),
    ("workloads/write", 1 << 3),
    ("workloads/exec", 1 << 4),
    ("inference/use", 1 << 5),
    ("operator/admin", 1 << 6),
];

/// The ability a method needs of a scoped session (`None`: methods anyone may call).
pub fn ability(path: &str) -> Option<&'static str> {
    let (service, method) = path.strip_prefix("/hanzo.node.v1.")?.split_once('/')?;
    Some(match (service, method) {
        ("NodeService", "GetHealth") | ("AuthService", _) => return None,
        ("NodeService", "GetStatus" | "GetMetrics")
        | ("ChainService", _)
        | ("OperatorService", "GetOperatorStatus") => "node/read",
        ("OperatorService", _) => "operator/admin",
        ("RepoService", _) => "repos/read",
        ("InferenceService", _) => "inference/use",
        (
            "NodeService",
            "ListContainers" | "InspectContainer" | "GetLogs" | "GetEvents" | "ListVolumes"
            | "ListNetworks",
        ) => "workloads/read",
        ("NodeService", "ExecInContainer") => "workloads/exec",
        ("NodeService", _) => "workloads/write",
        _ => "operator/admin",
    })
}

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope {
    abilities: u16,
    /// Most inference tokens (prompt and completion) the session may use.
    pub token_budget: Option<u64>,
}

impl Scope {
    /// Every ability, no budget: a session without a ReCap, or a signed call.
    pub const ALL: Self = Self {
        abilities: u16::MAX,
        token_budget: None,
    };

    /// The scope a ReCap's `grants` give on `node_uri`.
    pub fn granted(grants: &siwe::Grants, node_uri: &str) -> Result<Self, String> {
        let mut scope = Self {
            abilities: 0,
            token_budget: None,
        };
        let Some(granted) = grants.get(node_uri) else {
            return Ok(scope);
        };
        for (name, caveats) in granted {
            let bits = match name.split_once('/') {
                Some((ns, "*")) => ABILITIES
                    .iter()
                    .filter(|(a, _)| a.split_once('/').is_some_and(|(n, _)| n == ns))
                    .fold(0, |acc, (_, bit)| acc | bit),
                _ => ABILITIES
                    .iter()
                    .find(|(a, _)| a == name)
                    .map_or(0, |(_, bit)| *bit),
            };
            if bits == 0 {
                let known: Vec<&str> = ABILITIES.iter().map(|(a, _)| *a).collect();
                return Err(format!(
                    "this node grants no ability {name:?}; it knows {}",
                    known.join(", ")
                ));
            }
            scope.abilities |= bits;
            if bits & ability_bit("inference/use") != 0 {
                // Caveats are alternatives: the most generous applies.
                let mut budget = Some(0u64);
                for c in caveats {
                    match c.get("max_tokens") {
                        None => budget = None,
                        Some(n) => {
                            let n = n.as_u64().ok_or("max_tokens must be a whole number")?;
                            budget = budget.map(|b| b.max(n));
                        }
                    }
                }
                scope.token_budget = budget;
            }
        }
        Ok(scope)
    }

    /// Whether the scope holds `ability`.
    pub fn allows(&self, ability: &str) -> bool {
        self.abilities & ability_bit(ability) != 0
    }

    /// The abilities held, by name.
    pub fn names(&self) -> Vec<&'static str> {
        ABILITIES
            .iter()
            .filter(|(_, bit)| self.abilities & bit != 0)
            .map(|(a, _)| *a)
            .collect()
    }

    /// Whether this is every ability with no budget.
    pub fn is_all(&self) -> bool {
        *self == Self::ALL
    }
}

fn ability_bit(name: &str) -> u16 {
    ABILITIES
        .iter()
        .find(|(a, _)| *a == name)
        .map_or(0, |(_, bit)| *bit)
}

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing: health, sign-in, reflection.
    Anyone,
    /// A signed-in caller with stake (or an operator).
    Caller,
    /// This node's own operator.
    Admin,
}

/// What a gRPC method (`/package.Service/Method`) needs.
pub fn need(path: &str) -> Need {
    match path {
        "/hanzo.node.v1.NodeService/GetHealth" => Need::Anyone,
        "/hanzo.node.v1.OperatorService/RegisterOperator"
        | "/hanzo.node.v1.OperatorService/UpdateStake" => Need::Admin,
        p if p.starts_with("/hanzo.node.v1.AuthService/") => Need::Anyone,
        p if p.starts_with("/grpc.reflection.") => Need::Anyone,
        _ => Need::Caller,
    }
}

/// A caller the node let in, as handlers see it (a request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The signed-in address.
    pub address: Address,
    /// Its role now.
    pub role: Role,
    /// Its caller stake (wei).
    pub stake: U256,
    /// Requests per second it may make.
    pub rate: f64,
    /// What its session may do.
    pub scope: Scope,
    /// Its session's id (none for a call signed on its own).
    pub session: Option<u64>,
}

/// A refusal, with the reason label the metrics count it under.
#[derive(Debug)]
pub struct Refusal {
    /// What the caller gets.
    pub status: Status,
    /// `hanzo_rpc_auth_failures_total{reason}`.
    pub reason: &'static str,
}

impl Refusal {
    fn unauthenticated(reason: &'static str, msg: impl Into<String>) -> Self {
        Self {
            status: Status::unauthenticated(msg.into()),
            reason,
        }
    }

    fn denied(reason: &'static str, msg: impl Into<String>) -> Self {
        Self {
            status: Status::permission_denied(msg.into()),
            reason,
        }
    }
}

/// A session the node issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The token to send as `authorization: Bearer <token>`.
    pub token: String,
    /// The signed-in address.
    pub address: Address,
    /// When the token expires (unix seconds).
    pub expires_at: u64,
    /// The caller's role at sign-in.
    pub role: Role,
    /// What the session may do.
    pub scope: Scope,
}

/// What a session token says.
struct Token {
    address: Address,
    began: u64,
    id: u64,
    scope: Scope,
}

/// Sign-in, sessions and per-call checks. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

struct Inner {
    key: [u8; 32],
    node: NodeId,
    chain_id: u64,
    domain: String,
    uri: String,
    origins: Origins,
    acl: Acl,
    config: RpcConfig,
    nonces: Mutex<HashMap<String, u64>>,
    /// Nonces of EIP-712 signed calls, with their deadlines.
    spent: Mutex<HashMap<(Address, String), u64>>,
    buckets: Mutex<HashMap<Address, Bucket>>,
    /// Inference tokens used by sessions with a budget, with when each session ends.
    used: Mutex<HashMap<u64, (u64, u64)>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("domain", &self.inner.domain)
            .field("uri", &self.inner.uri)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Sign-in for the node with `key`, following chain `chain_id`, reached at
    /// `domain`, for pages on `origins`.
    pub fn new(
        key: &NodeKey,
        acl: Acl,
        chain_id: u64,
        domain: String,
        origins: Origins,
        config: RpcConfig,
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"hanzo-node rpc session key\0");
        h.update(key.seed().as_slice());
        let node = key.public();
        Self {
            inner: Arc::new(Inner {
                key: h.finalize().into(),
                node,
                chain_id,
                uri: format!("hanzo-node://{node}"),
                domain,
                origins,
                acl,
                config,
                nonces: Mutex::default(),
                spent: Mutex::default(),
                buckets: Mutex::default(),
                used: Mutex::default(),
            }),
        }
    }

    /// The domain sign-in messages must name.
    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The web origins whose pages may call and sign in.
    pub fn origins(&self) -> &Origins {
        &self.inner.origins
    }

    /// The URI sign-in messages must name: `hanzo-node://<node key>`.
    pub fn uri(&self) -> &str {
        &self.inner.uri
    }

    /// The chain id sign-in messages must name.
    pub fn chain_id(&self) -> u64 {
        self.inner.chain_id
    }

    /// A fresh single-use nonce and when it expires.
    pub fn nonce(&self, now: u64) -> Result<(String, u64), Status> {
        let nonce = hex::encode(rand::random::<[u8; 16]>());
        let expires = now + self.inner.config.nonce_ttl.as_secs();
        let mut nonces = lock(&self.inner.nonces);
        if nonces.len() >= MAX_PENDING_NONCES {
            nonces.retain(|_, e| *e > now);
        }
        if nonces.len() >= MAX_PENDING_NONCES {
            return Err(Status::resource_exhausted(
                "too many sign-ins in progress on this node; try again in a minute",
            ));
        }
        nonces.insert(nonce.clone(), expires);
        Ok((nonce, expires))
    }

    /// Signs in with a SIWE `message` and its `signature`.
    pub fn sign_in(&self, message: &str, signature: &[u8], now: u64) -> Result<Session, Refusal> {
        let m = siwe::Message::parse(message).map_err(|e| Refusal {
            status: Status::invalid_argument(e.to_string()),
            reason: "malformed_message",
        })?;
        let origins = &self.inner.origins;
        let accepted = origins.describe();
        let expect = siwe::Expect {
            domain: &|scheme, domain| origins.accepts_domain(scheme, domain),
            accepted: &accepted,
            node_uri: &self.inner.uri,
            chain_id: self.inner.chain_id,
        };
        let grants = m.check(&expect, now).map_err(|e| {
            let reason = match e {
                siwe::Error::ChainId { .. } => "wrong_chain",
                siwe::Error::Expired(_) | siwe::Error::NoExpiry => "expired_message",
                siwe::Error::Domain { .. } => "wrong_domain",
                siwe::Error::NotForThisNode { .. } => "other_node",
                siwe::Error::Recap(_) => "bad_recap",
                _ => "wrong_message",
            };
            Refusal::unauthenticated(reason, e.to_string())
        })?;
        let scope = match &grants {
            None => Scope::ALL,
            Some(g) => Scope::granted(g, &self.inner.uri).map_err(|e| Refusal {
                status: Status::invalid_argument(format!("SIWE message's ReCap: {e}")),
                reason: "bad_recap",
            })?,
        };
        match lock(&self.inner.nonces).remove(&m.nonce) {
            Some(expires) if expires > now => {}
            Some(_) => {
                return Err(Refusal::unauthenticated(
                    "nonce_expired",
                    "nonce expired; get a new one with AuthService/GetNonce",
                ));
            }
            None => {
                return Err(Refusal::unauthenticated(
                    "nonce_replayed",
                    "nonce already used or not issued by this node; get a new one with AuthService/GetNonce",
                ));
            }
        }
        siwe::verify(message, signature, m.address)
            .map_err(|e| Refusal::unauthenticated("bad_signature", e.to_string()))?;
        let caller = self.admit(m.address, Need::Caller, "AuthService/SignIn")?;
        let id = rand::random();
        Ok(self.session(m.address, now, now, caller.role, id, scope))
    }

    /// A new token for the session `token` belongs to.
    pub fn refresh(&self, token: &str, now: u64) -> Result<Session, Refusal> {
        let t = self.check_token(token, now)?;
        let (address, began) = (t.address, t.began);
        if began + self.inner.config.max_session.as_secs() <= now {
            return Err(Refusal::unauthenticated(
                "session_over",
                "this session reached rpc.max_session; sign in again",
            ));
        }
        let caller = self.admit(address, Need::Caller, "AuthService/Refresh")?;
        Ok(self.session(address, began, now, caller.role, t.id, t.scope))
    }

    fn session(
        &self,
        address: Address,
        began: u64,
        now: u64,
        role: Role,
        id: u64,
        scope: Scope,
    ) -> Session {
        let c = &self.inner.config;
        let expires_at = (now + c.session_ttl.as_secs()).min(began + c.max_session.as_secs());
        let mut payload = Vec::with_capacity(PAYLOAD_BYTES);
        payload.extend_from_slice(address.as_slice());
        payload.extend_from_slice(&began.to_be_bytes());
        payload.extend_from_slice(&expires_at.to_be_bytes());
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&scope.abilities.to_be_bytes());
        payload.extend_from_slice(&scope.token_budget.unwrap_or(u64::MAX).to_be_bytes());
        let token = format!(
            "v2.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(self.mac(&payload))
        );
        Session {
            token,
            address,
            expires_at,
            role,
            scope,
        }
    }

    fn mac(&self, payload: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.inner.key).expect("any key length");
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// What a token this node issued says.
    fn check_token(&self, token: &str, now: u64) -> Result<Token, Refusal> {
        let foreign = || {
            Refusal::unauthenticated(
                "bad_token",
                "session token was not issued by this node; sign in with AuthService/SignIn",
            )
        };
        if token.len() > MAX_TOKEN_BYTES {
            return Err(foreign());
        }
        let mut parts = token.split('.');
        let (Some("v2"), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(foreign());
        };
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| foreign())?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| foreign())?;
        let expected = self.mac(&payload);
        if payload.len() != PAYLOAD_BYTES
            || mac.len() != expected.len()
            || mac
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return Err(foreign());
        }
        let address = Address::from_slice(&payload[..20]);
        let word = |at: usize| -> Result<u64, Refusal> {
            Ok(u64::from_be_bytes(
                payload[at..at + 8].try_into().map_err(|_| foreign())?,
            ))
        };
        let (began, expires, id) = (word(20)?, word(28)?, word(36)?);
        let abilities = u16::from_be_bytes([payload[44], payload[45]]);
        let budget = word(46)?;
        if expires <= now {
            return Err(Refusal::unauthenticated(
                "expired_token",
                format!(
                    "session token expired at {}; Refresh it or sign in again",
                    siwe::rfc3339(expires)
                ),
            ));
        }
        Ok(Token {
            address,
            began,
            id,
            scope: Scope {
                abilities,
                token_budget: (budget != u64::MAX).then_some(budget),
            },
        })
    }

    /// Checks a call to `path` carrying the `authorization` header: who the caller
    /// is, that their stake and role allow the method now, and their rate.
    pub fn authorize(
        &self,
        path: &str,
        authorization: Option<&str>,
        now: u64,
    ) -> Result<Option<Caller>, Refusal> {
        let need = need(path);
        let token = authorization.and_then(|h| h.strip_prefix("Bearer "));
        let Some(token) = token else {
            if need == Need::Anyone {
                return Ok(None);
            }
            return Err(Refusal::unauthenticated(
                "no_token",
                format!(
                    "{path} needs a signed-in caller: get a nonce (AuthService/GetNonce), sign in (AuthService/SignIn) and send `authorization: Bearer <token>`"
                ),
            ));
        };
        let t = match self.check_token(token, now) {
            Ok(t) => t,
            Err(_) if need == Need::Anyone => return Ok(None),
            Err(e) => return Err(e),
        };
        if let Some(ability) = ability(path)
            && !t.scope.allows(ability)
        {
            let granted = t.scope.names();
            return Err(Refusal::denied(
                "out_of_scope",
                format!(
                    "{path} needs {ability}, which this session's ReCap does not grant (it grants {} on {}); sign in with a ReCap that grants {ability}",
                    if granted.is_empty() {
                        "nothing".to_owned()
                    } else {
                        granted.join(", ")
                    },
                    self.inner.uri
                ),
            ));
        }
        let mut caller = self.admit(t.address, need, path)?;
        caller.scope = t.scope;
        caller.session = Some(t.id);
        Ok(Some(caller))
    }

    /// Inference tokens `caller`'s session may still use (`None`: no budget), or the
    /// refusal when its budget is spent.
    pub fn tokens_left(&self, caller: &Caller) -> Result<Option<u64>, Status> {
        let (Some(budget), Some(id)) = (caller.scope.token_budget, caller.session) else {
            return Ok(None);
        };
        let used = lock(&self.inner.used).get(&id).map_or(0, |(u, _)| *u);
        if used >= budget {
            return Err(Status::resource_exhausted(format!(
                "this session's ReCap grants inference/use up to {budget} tokens and {used} are used; sign in again for more"
            )));
        }
        Ok(Some(budget - used))
    }

    /// Counts `tokens` against `caller`'s session budget, if it has one.
    pub fn spend(&self, caller: &Caller, tokens: u64, now: u64) {
        let (Some(_), Some(id)) = (caller.scope.token_budget, caller.session) else {
            return;
        };
        let mut used = lock(&self.inner.used);
        if used.len() >= MAX_PENDING_NONCES {
            used.retain(|_, (_, until)| *until > now);
        }
        let until = now + self.inner.config.max_session.as_secs();
        let entry = used.entry(id).or_insert((0, until));
        entry.0 = entry.0.saturating_add(tokens);
    }

    /// Checks a call to `path` signed on its own (EIP-712) over the message `body`:
    /// the signature and deadline, role and stake, then spends the nonce and takes
    /// from the rate, as for a session.
    pub fn authorize_signed(
        &self,
        path: &str,
        signed: &eip712::Signed,
        body: &[u8],
        now: u64,
    ) -> Result<Caller, Refusal> {
        let (address, deadline) = signed
            .signer(path, body, &self.inner.node, self.inner.chain_id, now)
            .map_err(|e| {
                let reason = match e {
                    eip712::Error::Expired { .. } | eip712::Error::TooFar { .. } => {
                        "expired_signature"
                    }
                    eip712::Error::Mismatch { .. } => "signature_mismatch",
                    _ => "bad_signature",
                };
                Refusal::unauthenticated(reason, e.to_string())
            })?;
        let need = need(path);
        // Only callers who may call spend a nonce, so strangers cannot fill the map.
        self.check(address, need, path).map_err(|mut refusal| {
            if signed.address.is_none() {
                // The address was recovered, not claimed: it may be nobody's.
                refusal.status = Status::new(
                    refusal.status.code(),
                    format!(
                        "{} ({address} is the signer recovered from {}; if it is not yours, the signed fields differ from this request: send {} with your address to be told)",
                        refusal.status.message(),
                        eip712::SIGNATURE,
                        eip712::ADDRESS
                    ),
                );
            }
            refusal
        })?;
        {
            let mut spent = lock(&self.inner.spent);
            if spent.len() >= MAX_PENDING_NONCES {
                spent.retain(|_, d| *d > now);
            }
            if spent.len() >= MAX_PENDING_NONCES {
                return Err(Refusal {
                    status: Status::resource_exhausted(
                        "too many signed calls in the last 10 minutes; sign in for a session",
                    ),
                    reason: "busy",
                });
            }
            if spent
                .insert((address, signed.nonce.clone()), deadline)
                .is_some()
            {
                return Err(Refusal::unauthenticated(
                    "nonce_replayed",
                    format!(
                        "nonce {:?} already used by {address}; sign the request again with a fresh nonce",
                        signed.nonce
                    ),
                ));
            }
        }
        self.admit(address, need, path)
    }

    /// Checks that `address` may call a method needing `need`, now, and takes one
    /// request from its rate.
    pub fn admit(&self, address: Address, need: Need, what: &str) -> Result<Caller, Refusal> {
        let caller = self.check(address, need, what)?;
        let admitted = {
            let mut buckets = lock(&self.inner.buckets);
            let bucket = buckets
                .entry(address)
                .or_insert_with(|| Bucket::new(caller.rate));
            bucket.set_rate(caller.rate);
            bucket.try_take(1.0, Instant::now())
        };
        if !admitted {
            return Err(Refusal {
                status: Status::resource_exhausted(format!(
                    "rate limit: {:.0} requests/s for {address} with stake {}; more stake raises it",
                    caller.rate,
                    eth(caller.stake)
                )),
                reason: "rate_limited",
            });
        }
        Ok(caller)
    }

    /// Checks that `address` may call a method needing `need`, now, without taking
    /// from its rate (an open stream re-checks with this).
    pub fn check(&self, address: Address, need: Need, what: &str) -> Result<Caller, Refusal> {
        let snapshot = self.inner.acl.snapshot();
        let role = snapshot.rpc_role(&address, &self.inner.node);
        let stake = snapshot.caller_stake(&address);
        if role == Role::Anonymous && need != Need::Anyone {
            let why = snapshot
                .check_caller(&address)
                .err()
                .map_or_else(|| "no stake".to_owned(), |e| e.to_string());
            return Err(Refusal::denied(
                "no_stake",
                format!("{address}: {why}; deposit with `hanzo-node caller deposit`"),
            ));
        }
        if need == Need::Admin && role != Role::Admin {
            return Err(Refusal::denied(
                "not_admin",
                format!("{what} is for this node's own operator; {address} is not it"),
            ));
        }
        let c = &self.inner.config;
        let rate = match role {
            Role::Caller => {
                let min = snapshot.state.params.min_caller_stake.max(U256::from(1));
                let ratio = f64::from(stake) / f64::from(min);
                (c.base_rate * ratio).clamp(c.base_rate, c.max_rate)
            }
            Role::Anonymous => c.base_rate,
            Role::OperatorPeer | Role::Admin => c.max_rate,
        };
        Ok(Caller {
            address,
            role,
            stake,
            rate,
            scope: Scope::ALL,
            session: None,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use alloy::signers::{SignerSync, local::PrivateKeySigner};
    use proptest::prelude::*;

    use super::*;
    use crate::acl::{Acl, Change, Snapshot, StakeRole};

    const NOW: u64 = 1_800_000_000;

    fn auth_with(stakers: &[(Address, u64)]) -> Auth {
        let mut snap = Snapshot::default();
        snap.state.apply(Change::Params(crate::acl::Params {
            min_operator_stake: U256::from(10u64.pow(18)),
            min_caller_stake: U256::from(10u64.pow(17)),
            unbonding_period: 60,
        }));
        for (a, wei) in stakers {
            snap.state.apply(Change::Stake {
                account: *a,
                role: StakeRole::Caller,
                stake: U256::from(*wei),
            });
        }
        let (acl, publisher) = Acl::new(snap);
        std::mem::forget(publisher);
        Auth::new(
            &NodeKey::generate(),
            acl,
            31337,
            "127.0.0.1:8690".into(),
            Origins::new(&["https://app.example".into()], &[], "127.0.0.1:8690").unwrap(),
            RpcConfig::default(),
        )
    }

    fn message(auth: &Auth, key: &PrivateKeySigner, chain: u64, nonce: &str) -> siwe::Message {
        siwe::Message {
            domain: auth.domain().into(),
            address: key.address(),
            uri: auth.uri().into(),
            chain_id: chain,
            nonce: nonce.into(),
            issued_at: NOW,
            expires_at: Some(NOW + 300),
            ..siwe::Message::default()
        }
    }

    fn sign(key: &PrivateKeySigner, m: &siwe::Message) -> (String, Vec<u8>) {
        let text = siwe::message(m);
        let sig = key.sign_message_sync(text.as_bytes()).unwrap();
        (text, sig.as_bytes().to_vec())
    }

    fn signed(auth: &Auth, key: &PrivateKeySigner, chain: u64, nonce: &str) -> (String, Vec<u8>) {
        sign(key, &message(auth, key, chain, nonce))
    }

    #[test]
    fn a_recap_scopes_the_session() {
        let key = PrivateKeySigner::random();
        let auth = auth_with(&[(key.address(), 10u64.pow(17))]);
        let grants: siwe::Grants = serde_json::from_value(serde_json::json!({
            auth.uri(): {"inference/use": [{"max_tokens": 100}], "workloads/read": [{}]}
        }))
        .unwrap();
        let (nonce, _) = auth.nonce(NOW).unwrap();
        // A dApp's message: its own domain and URI; the ReCap names the node.
        let m = siwe::Message {
            scheme: Some("https".into()),
            domain: "app.example".into(),
            uri: "https://app.example/".into(),
            statement: Some(siwe::recap_statement(&grants)),
            resources: vec![siwe::recap_resource(&grants)],
            ..message(&auth, &key, 31337, &nonce)
        };
        let (text, sig) = sign(&key, &m);
        let s = auth.sign_in(&text, &sig, NOW).unwrap();
        assert_eq!(s.scope.names(), ["workloads/read", "inference/use"]);
        let bearer = format!("Bearer {}", s.token);
        let call = |path: &str| auth.authorize(path, Some(&bearer), NOW);
        let logs = call("/hanzo.node.v1.NodeService/GetLogs").unwrap().unwrap();
        let e = call("/hanzo.node.v1.NodeService/Deploy").unwrap_err();
        assert_eq!(e.status.code(), tonic::Code::PermissionDenied);
        assert!(
            e.status.message().contains("needs workloads/write, which this session's ReCap does not grant (it grants workloads/read, inference/use"),
            "{}",
            e.status.message()
        );
        // The budget holds across refreshes and is the session's alone.
        assert_eq!(auth.tokens_left(&logs).unwrap(), Some(100));
        auth.spend(&logs, 60, NOW);
        let refreshed = auth.refresh(&s.token, NOW + 1).unwrap();
        let again = auth
            .authorize(
                "/hanzo.node.v1.InferenceService/Embed",
                Some(&format!("Bearer {}", refreshed.token)),
                NOW + 1,
            )
            .unwrap()
            .unwrap();
        assert_eq!(auth.tokens_left(&again).unwrap(), Some(40));
        auth.spend(&again, 40, NOW);
        let e = auth.tokens_left(&again).unwrap_err();
        assert!(
            e.message().contains("up to 100 tokens and 100 are used"),
            "{}",
            e.message()
        );
        // An ability the node does not know is refused at sign-in.
        let (nonce, _) = auth.nonce(NOW).unwrap();
        let unknown: siwe::Grants = serde_json::from_value(serde_json::json!({
            auth.uri(): {"wallet/drain": [{}]}
        }))
        .unwrap();
        let m = siwe::Message {
            statement: Some(siwe::recap_statement(&unknown)),
            resources: vec![siwe::recap_resource(&unknown)],
            ..message(&auth, &key, 31337, &nonce)
        };
        let (text, sig) = sign(&key, &m);
        let e = auth.sign_in(&text, &sig, NOW).unwrap_err();
        assert!(
            e.status.message().contains("no ability \"wallet/drain\""),
            "{}",
            e.status.message()
        );
        // A message for a domain the node does not accept, or another node.
        let (nonce, _) = auth.nonce(NOW).unwrap();
        let m = siwe::Message {
            domain: "phish.example".into(),
            ..message(&auth, &key, 31337, &nonce)
        };
        let (text, sig) = sign(&key, &m);
        assert_eq!(
            auth.sign_in(&text, &sig, NOW).unwrap_err().reason,
            "wrong_domain"
        );
        let m = siwe::Message {
            uri: "hanzo-node://someone-else".into(),
            ..message(&auth, &key, 31337, &nonce)
        };
        let (text, sig) = sign(&key, &m);
        assert_eq!(
            auth.sign_in(&text, &sig, NOW).unwrap_err().reason,
            "other_node"
        );
    }

    #[test]
    fn a_staked_caller_signs_in_once_per_nonce() {
        let key = PrivateKeySigner::random();
        let auth = auth_with(&[(key.address(), 10u64.pow(17))]);
        let (nonce, _) = auth.nonce(NOW).unwrap();
        let (text, sig) = signed(&auth, &key, 31337, &nonce);
        let s = auth.sign_in(&text, &sig, NOW).unwrap();
        assert_eq!(s.address, key.address());
        assert_eq!(s.role, Role::Caller);
        let caller = auth
            .authorize(
                "/hanzo.node.v1.NodeService/GetStatus",
                Some(&format!("Bearer {}", s.token)),
                NOW,
            )
            .unwrap()
            .unwrap();
        assert_eq!(caller.address, key.address());
        // The same message again: the nonce is spent.
        let e = auth.sign_in(&text, &sig, NOW).unwrap_err();
        assert_eq!(e.reason, "nonce_replayed");
        assert!(e.status.message().contains("nonce already used"));
    }

    #[test]
    fn refusals_say_why() {
        let key = PrivateKeySigner::random();
        let poor = PrivateKeySigner::random();
        let auth = auth_with(&[
            (key.address(), 10u64.pow(17)),
            (poor.address(), 2 * 10u64.pow(16)),
        ]);
        // Wrong chain id.
        let (nonce, _) = auth.nonce(NOW).unwrap();
        let (text, sig) = signed(&auth, &key, 1, &nonce);
        let e = auth.sign_in(&text, &sig, NOW).unwrap_err();
        assert_eq!(e.status.code(), tonic::Code::Unauthenticated);
        assert!(
            e.status.message().contains("chain id 1"),
            "{}",
            e.status.message()
        );
        // Stake below the minimum.
        let (nonce, _) = auth.nonce(NOW).unwrap();
        let (text, sig) = signed(&auth, &poor, 31337, &nonce);
        let e = auth.sign_in(&text, &sig, NOW).unwrap_err();
        assert_eq!(e.status.code(), tonic::Code::PermissionDenied);
        assert!(
            e.status
                .message()
                .contains("0.02 ETH is below the minimum 0.1 ETH"),
            "{}",
            e.status.message()
        );
        // No token, a forged token, an expired token.
        let path = "/hanzo.node.v1.NodeService/GetStatus";
        assert_eq!(
            auth.authorize(path, None, NOW).unwrap_err().reason,
            "no_token"
        );
        assert_eq!(
            auth.authorize(path, Some("Bearer v2.AAAA.BBBB"), NOW)
                .unwrap_err()
                .reason,
            "bad_token"
        );
        let s = auth.session(key.address(), NOW, NOW, Role::Caller, 7, Scope::ALL);
        let later = s.expires_at + 1;
        let e = auth
            .authorize(path, Some(&format!("Bearer {}", s.token)), later)
            .unwrap_err();
        assert_eq!(e.reason, "expired_token");
        // Health needs nothing.
        assert!(
            auth.authorize("/hanzo.node.v1.NodeService/GetHealth", None, NOW)
                .unwrap()
                .is_none()
        );
        // The operator service's transactions are for the admin only.
        let e = auth
            .authorize(
                "/hanzo.node.v1.OperatorService/UpdateStake",
                Some(&format!("Bearer {}", s.token)),
                NOW,
            )
            .unwrap_err();
        assert_eq!(e.reason, "not_admin");
    }

    #[test]
    fn the_rate_grows_with_stake_and_is_enforced() {
        let (small, big) = (PrivateKeySigner::random(), PrivateKeySigner::random());
        let auth = auth_with(&[
            (small.address(), 10u64.pow(17)),
            (big.address(), 10u64.pow(18)),
        ]);
        let a = auth.admit(small.address(), Need::Caller, "x").unwrap();
        let b = auth.admit(big.address(), Need::Caller, "x").unwrap();
        assert!(
            (a.rate - 20.0).abs() < 1e-9 && (b.rate - 200.0).abs() < 1e-9,
            "{} {}",
            a.rate,
            b.rate
        );
        let refused = (0..100)
            .map(|_| auth.admit(small.address(), Need::Caller, "x"))
            .filter(|r| {
                r.as_ref()
                    .is_err_and(|e| e.status.code() == tonic::Code::ResourceExhausted)
            })
            .count();
        assert!(refused >= 70, "{refused}");
    }

    #[test]
    fn a_session_refreshes_until_its_maximum() {
        let key = PrivateKeySigner::random();
        let auth = auth_with(&[(key.address(), 10u64.pow(17))]);
        let s = auth.session(key.address(), NOW, NOW, Role::Caller, 7, Scope::ALL);
        let r = auth.refresh(&s.token, NOW + 60).unwrap();
        assert!(r.expires_at > s.expires_at);
        let max = RpcConfig::default().max_session.as_secs();
        let late = auth.session(
            key.address(),
            NOW - max + 10,
            NOW,
            Role::Caller,
            7,
            Scope::ALL,
        );
        assert!(late.expires_at <= NOW + 10);
        assert_eq!(
            auth.refresh(&late.token, NOW + 11).unwrap_err().reason,
            "expired_token"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_tokens_are_refused_without_panic(t in "\\PC{0,300}") {
            let auth = auth_with(&[]);
            let _ = auth.authorize("/hanzo.node.v1.NodeService/GetStatus", Some(&format!("Bearer {t}")), NOW);
        }
    }
}
