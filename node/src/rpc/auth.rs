//! Who is calling: Sign-In with Ethereum, session tokens, single-use nonces, the
//! caller's role and stake from the live ACL on every call, and per-caller rate
//! limits that grow with stake.
//!
//! A session token is `v1.<payload>.<mac>` (base64url): the address, when the session
//! began and when the token expires, under an HMAC key derived from the node key. It
//! needs no state to check; stake is checked against the ACL on each call anyway.

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

use super::{eip712, siwe, siwe::Checks as _};
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
    acl: Acl,
    config: RpcConfig,
    nonces: Mutex<HashMap<String, u64>>,
    /// Nonces of EIP-712 signed calls, with their deadlines.
    spent: Mutex<HashMap<(Address, String), u64>>,
    buckets: Mutex<HashMap<Address, Bucket>>,
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
    /// `domain`.
    pub fn new(key: &NodeKey, acl: Acl, chain_id: u64, domain: String, config: RpcConfig) -> Self {
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
                acl,
                config,
                nonces: Mutex::default(),
                spent: Mutex::default(),
                buckets: Mutex::default(),
            }),
        }
    }

    /// The domain sign-in messages must name.
    pub fn domain(&self) -> &str {
        &self.inner.domain
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
        m.check(
            &self.inner.domain,
            &self.inner.uri,
            self.inner.chain_id,
            now,
        )
        .map_err(|e| {
            let reason = match e {
                siwe::Error::ChainId { .. } => "wrong_chain",
                siwe::Error::Expired(_) | siwe::Error::NoExpiry => "expired_message",
                _ => "wrong_message",
            };
            Refusal::unauthenticated(reason, e.to_string())
        })?;
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
        Ok(self.session(m.address, now, now, caller.role))
    }

    /// A new token for the session `token` belongs to.
    pub fn refresh(&self, token: &str, now: u64) -> Result<Session, Refusal> {
        let (address, began, _) = self.check_token(token, now)?;
        if began + self.inner.config.max_session.as_secs() <= now {
            return Err(Refusal::unauthenticated(
                "session_over",
                "this session reached rpc.max_session; sign in again",
            ));
        }
        let caller = self.admit(address, Need::Caller, "AuthService/Refresh")?;
        Ok(self.session(address, began, now, caller.role))
    }

    fn session(&self, address: Address, began: u64, now: u64, role: Role) -> Session {
        let c = &self.inner.config;
        let expires_at = (now + c.session_ttl.as_secs()).min(began + c.max_session.as_secs());
        let mut payload = Vec::with_capacity(36);
        payload.extend_from_slice(address.as_slice());
        payload.extend_from_slice(&began.to_be_bytes());
        payload.extend_from_slice(&expires_at.to_be_bytes());
        let token = format!(
            "v1.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode(self.mac(&payload))
        );
        Session {
            token,
            address,
            expires_at,
            role,
        }
    }

    fn mac(&self, payload: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.inner.key).expect("any key length");
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// The address, session start and expiry of a token this node issued.
    fn check_token(&self, token: &str, now: u64) -> Result<(Address, u64, u64), Refusal> {
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
        let (Some("v1"), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(foreign());
        };
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| foreign())?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| foreign())?;
        let expected = self.mac(&payload);
        if payload.len() != 36
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
        let began = u64::from_be_bytes(payload[20..28].try_into().map_err(|_| foreign())?);
        let expires = u64::from_be_bytes(payload[28..36].try_into().map_err(|_| foreign())?);
        if expires <= now {
            return Err(Refusal::unauthenticated(
                "expired_token",
                format!(
                    "session token expired at {}; Refresh it or sign in again",
                    siwe::rfc3339(expires)
                ),
            ));
        }
        Ok((address, began, expires))
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
        let (address, _, _) = match self.check_token(token, now) {
            Ok(t) => t,
            Err(_) if need == Need::Anyone => return Ok(None),
            Err(e) => return Err(e),
        };
        self.admit(address, need, path).map(Some)
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
                    _ => "bad_signature",
                };
                Refusal::unauthenticated(reason, e.to_string())
            })?;
        let need = need(path);
        // Only callers who may call spend a nonce, so strangers cannot fill the map.
        self.check(address, need, path)?;
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
            RpcConfig::default(),
        )
    }

    fn signed(auth: &Auth, key: &PrivateKeySigner, chain: u64, nonce: &str) -> (String, Vec<u8>) {
        let text = siwe::message(&siwe::Message {
            domain: auth.domain().into(),
            address: key.address(),
            uri: auth.uri().into(),
            chain_id: chain,
            nonce: nonce.into(),
            issued_at: NOW,
            expires_at: Some(NOW + 300),
            not_before: None,
        });
        let sig = key.sign_message_sync(text.as_bytes()).unwrap();
        (text, sig.as_bytes().to_vec())
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
            auth.authorize(path, Some("Bearer v1.AAAA.BBBB"), NOW)
                .unwrap_err()
                .reason,
            "bad_token"
        );
        let s = auth.session(key.address(), NOW, NOW, Role::Caller);
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
        let s = auth.session(key.address(), NOW, NOW, Role::Caller);
        let r = auth.refresh(&s.token, NOW + 60).unwrap();
        assert!(r.expires_at > s.expires_at);
        let max = RpcConfig::default().max_session.as_secs();
        let late = auth.session(key.address(), NOW - max + 10, NOW, Role::Caller);
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
