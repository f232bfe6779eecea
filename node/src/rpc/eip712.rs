//! One call signed on its own, without a session: the caller's wallet signs EIP-712
//! typed data naming the method, the hash of the request message, this node, the
//! chain, a single-use nonce and a deadline. The signature travels in request
//! metadata; only unary calls can be signed this way (a stream has no one body).

use alloy::{
    primitives::{Address, B256, Signature, U256, keccak256},
    signers::{SignerSync, local::PrivateKeySigner},
    sol_types::{Eip712Domain, SolStruct, eip712_domain},
};

use crate::keys::NodeId;

alloy::sol! {
    /// What a wallet signs for one call.
    #[derive(Debug)]
    struct NodeRequest {
        string method;
        bytes32 bodyHash;
        bytes32 node;
        uint256 chainId;
        string nonce;
        uint64 deadline;
    }
}

/// Metadata carrying the 65-byte signature, 0x-hex.
pub const SIGNATURE: &str = "x-hanzo-signature";
/// Metadata carrying the nonce: 1 to 128 printable ASCII characters, never reused.
pub const NONCE: &str = "x-hanzo-nonce";
/// Metadata carrying the deadline, unix seconds, at most 10 minutes ahead.
pub const DEADLINE: &str = "x-hanzo-deadline";
/// Metadata carrying the signer's address (optional): with it, a signature over other
/// fields than the request's is refused as such instead of recovering a stranger.
pub const ADDRESS: &str = "x-hanzo-address";
/// Furthest a deadline may lie ahead (it bounds how long nonces are remembered).
pub const MAX_AHEAD: u64 = 600;
const MAX_NONCE: usize = 128;

/// Why a signed call is refused.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{SIGNATURE} needs {NONCE} and {DEADLINE} beside it")]
    Incomplete,
    #[error("{NONCE} must be 1 to {MAX_NONCE} printable ASCII characters")]
    Nonce,
    #[error("{DEADLINE} {0:?} is not unix seconds")]
    DeadlineFormat(String),
    #[error("the signed request's deadline {deadline} has passed (now {now}); sign it again")]
    Expired { deadline: u64, now: u64 },
    #[error(
        "the deadline {deadline} is more than {MAX_AHEAD} s ahead (now {now}); sign with a nearer one"
    )]
    TooFar { deadline: u64, now: u64 },
    #[error("{SIGNATURE} is not a 65-byte 0x-hex signature: {0}")]
    Signature(String),
    #[error("{ADDRESS} {0:?} is not a 0x address")]
    Address(String),
    #[error(
        "the signature does not match this request: the signed method, message, node, chain id, nonce or deadline differ from what was sent (it recovers to {recovered}, not {claimed}); sign exactly this request"
    )]
    Mismatch {
        claimed: Address,
        recovered: Address,
    },
}

/// The signing domain: `hanzo-node`, version 1, on `chain_id`.
pub fn domain(chain_id: u64) -> Eip712Domain {
    eip712_domain! {
        name: "hanzo-node",
        version: "1",
        chain_id: chain_id,
    }
}

/// The typed data for a call of `method` (its gRPC path) with message `body` (the
/// protobuf encoding the caller sends).
pub fn request(
    method: &str,
    body: &[u8],
    node: &NodeId,
    chain_id: u64,
    nonce: &str,
    deadline: u64,
) -> NodeRequest {
    NodeRequest {
        method: method.to_owned(),
        bodyHash: keccak256(body),
        node: B256::from(node.0),
        chainId: U256::from(chain_id),
        nonce: nonce.to_owned(),
        deadline,
    }
}

/// Signed metadata as a client sends it: the four header names and values.
pub fn sign(
    signer: &PrivateKeySigner,
    request: &NodeRequest,
    chain_id: u64,
) -> Result<[(&'static str, String); 4], alloy::signers::Error> {
    let sig = signer.sign_hash_sync(&request.eip712_signing_hash(&domain(chain_id)))?;
    Ok([
        (SIGNATURE, format!("0x{}", hex::encode(sig.as_bytes()))),
        (NONCE, request.nonce.clone()),
        (DEADLINE, request.deadline.to_string()),
        (ADDRESS, signer.address().to_checksum(None)),
    ])
}

/// The metadata of a signed call, as received.
#[derive(Debug, Clone)]
pub struct Signed {
    /// 0x-hex signature.
    pub signature: String,
    /// The nonce.
    pub nonce: String,
    /// The deadline, as sent.
    pub deadline: String,
    /// The address the caller says signed, if it says.
    pub address: Option<String>,
}

impl Signed {
    /// Checks the nonce's form and the deadline against `now`, and recovers the signer
    /// of `method` with `body` for this node and chain; the nonce is the caller's to
    /// spend.
    pub fn signer(
        &self,
        method: &str,
        body: &[u8],
        node: &NodeId,
        chain_id: u64,
        now: u64,
    ) -> Result<(Address, u64), Error> {
        if self.nonce.is_empty()
            || self.nonce.len() > MAX_NONCE
            || !self.nonce.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(Error::Nonce);
        }
        let deadline: u64 = self
            .deadline
            .parse()
            .map_err(|_| Error::DeadlineFormat(self.deadline.chars().take(32).collect()))?;
        if deadline <= now {
            return Err(Error::Expired { deadline, now });
        }
        if deadline > now + MAX_AHEAD {
            return Err(Error::TooFar { deadline, now });
        }
        let raw = self.signature.strip_prefix("0x").unwrap_or(&self.signature);
        if raw.len() != 130 {
            return Err(Error::Signature(format!("{} hex digits", raw.len())));
        }
        let bytes = hex::decode(raw).map_err(|e| Error::Signature(e.to_string()))?;
        let sig = Signature::try_from(&bytes[..]).map_err(|e| Error::Signature(e.to_string()))?;
        let hash = request(method, body, node, chain_id, &self.nonce, deadline)
            .eip712_signing_hash(&domain(chain_id));
        let address = sig
            .recover_address_from_prehash(&hash)
            .map_err(|e| Error::Signature(e.to_string()))?;
        if let Some(claimed) = &self.address {
            let claimed: Address = claimed
                .parse()
                .map_err(|_| Error::Address(claimed.chars().take(64).collect()))?;
            if claimed != address {
                return Err(Error::Mismatch {
                    claimed,
                    recovered: address,
                });
            }
        }
        Ok((address, deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signer_is_recovered_only_for_what_was_signed() {
        let key = PrivateKeySigner::random();
        let node = NodeId([7; 32]);
        let now = 1_000_000;
        let req = request(
            "/hanzo.node.v1.NodeService/GetStatus",
            b"body",
            &node,
            31337,
            "n-1",
            now + 60,
        );
        let [(_, signature), (_, nonce), (_, deadline), (_, address)] =
            sign(&key, &req, 31337).unwrap();
        let anonymous = Signed {
            signature,
            nonce,
            deadline,
            address: None,
        };
        let signed = Signed {
            address: Some(address),
            ..anonymous.clone()
        };
        let ok = signed.signer(
            "/hanzo.node.v1.NodeService/GetStatus",
            b"body",
            &node,
            31337,
            now,
        );
        assert_eq!(ok.unwrap().0, key.address());
        // Another body, method, node or chain recovers someone else.
        for (m, b, n, c) in [
            (
                "/hanzo.node.v1.NodeService/GetStatus",
                &b"other"[..],
                node,
                31337,
            ),
            ("/hanzo.node.v1.NodeService/Deploy", b"body", node, 31337),
            (
                "/hanzo.node.v1.NodeService/GetStatus",
                b"body",
                NodeId([8; 32]),
                31337,
            ),
            ("/hanzo.node.v1.NodeService/GetStatus", b"body", node, 1),
        ] {
            let who = anonymous.signer(m, b, &n, c, now).map(|(a, _)| a);
            assert!(who.is_err() || who.unwrap() != key.address());
            // With the signer's address beside it, the mismatch is named as such.
            let e = signed.signer(m, b, &n, c, now).unwrap_err();
            assert!(
                matches!(e, Error::Mismatch { claimed, .. } if claimed == key.address()),
                "{e}"
            );
        }
        let late = signed.signer(
            "/hanzo.node.v1.NodeService/GetStatus",
            b"body",
            &node,
            31337,
            now + 60,
        );
        assert!(matches!(late, Err(Error::Expired { .. })));
        let early = signed.signer(
            "/hanzo.node.v1.NodeService/GetStatus",
            b"body",
            &node,
            31337,
            now - 600,
        );
        assert!(matches!(early, Err(Error::TooFar { .. })));
        let bad = Signed {
            signature: "0x12".into(),
            ..signed.clone()
        };
        assert!(matches!(
            bad.signer("m", b"", &node, 1, now),
            Err(Error::Signature(_))
        ));
        let bad = Signed {
            nonce: "a b".into(),
            ..signed
        };
        assert!(matches!(
            bad.signer("m", b"", &node, 1, now),
            Err(Error::Nonce)
        ));
    }
}
