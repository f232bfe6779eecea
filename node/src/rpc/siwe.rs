//! Sign-In with Ethereum (EIP-4361) messages: parsing (bounded) and the checks a
//! node makes before it trusts one. Pure: the caller supplies the time and what the
//! message must name.

use alloy::primitives::{Address, Signature};

/// Longest message accepted.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// Why a sign-in message is refused.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("SIWE message is {0} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLong(usize),
    #[error("SIWE message is malformed: {0}")]
    Malformed(String),
    #[error("SIWE message is for domain {found:?}, but this node is {expected:?}")]
    Domain { found: String, expected: String },
    #[error("SIWE message URI is {found:?}, but this node is {expected:?}")]
    Uri { found: String, expected: String },
    #[error("SIWE message is for chain id {found}, but this node follows chain {expected}")]
    ChainId { found: u64, expected: u64 },
    #[error("SIWE message expired at {0}")]
    Expired(String),
    #[error("SIWE message is not valid before {0}")]
    NotYetValid(String),
    #[error("SIWE message has no Expiration Time; sign one that expires")]
    NoExpiry,
    #[error("SIWE message was issued at {0}, more than 10 minutes off this node's clock")]
    IssuedAt(String),
    #[error("signature does not verify: {0}")]
    Signature(String),
    #[error("signature is by {signer}, not by the message's address {address}")]
    WrongSigner { signer: Address, address: Address },
}

pub use hanzo_node_client::siwe::{HEADER, Message, message, rfc3339};

/// What the node does with a SIWE message: read it, and check it names this node.
pub trait Checks: Sized {
    /// Parses the text of a SIWE message.
    fn parse(text: &str) -> Result<Self, Error>;
    /// Checks that the message names this node (`domain`, `uri`, `chain_id`) and is
    /// valid at `now`.
    fn check(&self, domain: &str, uri: &str, chain_id: u64, now: u64) -> Result<(), Error>;
}

impl Checks for Message {
    fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(Error::TooLong(text.len()));
        }
        let bad = |s: &str| Error::Malformed(s.to_owned());
        let mut lines = text.lines();
        let domain = lines
            .next()
            .and_then(|l| l.strip_suffix(HEADER))
            .ok_or_else(|| bad("the first line must be `<domain> wants you to sign in with your Ethereum account:`"))?
            .to_owned();
        let address: Address = lines
            .next()
            .ok_or_else(|| bad("no address line"))?
            .trim()
            .parse()
            .map_err(|e| Error::Malformed(format!("address: {e}")))?;
        let mut fields = std::collections::HashMap::new();
        for line in lines {
            if let Some((k, v)) = line.split_once(": ") {
                fields.entry(k).or_insert(v);
            }
        }
        let field = |k: &str| {
            fields
                .get(k)
                .map(|v| (*v).to_owned())
                .ok_or_else(|| Error::Malformed(format!("no `{k}:` line")))
        };
        if field("Version")? != "1" {
            return Err(bad("Version must be 1"));
        }
        let time = |k: &str| -> Result<Option<u64>, Error> {
            fields
                .get(k)
                .map(|v| {
                    humantime::parse_rfc3339_weak(v.trim_end_matches('Z'))
                        .ok()
                        .or_else(|| humantime::parse_rfc3339(v).ok())
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .ok_or_else(|| {
                            Error::Malformed(format!("`{k}:` is not an RFC 3339 time: {v:?}"))
                        })
                })
                .transpose()
        };
        Ok(Self {
            domain,
            address,
            uri: field("URI")?,
            chain_id: field("Chain ID")?
                .parse()
                .map_err(|e| Error::Malformed(format!("Chain ID: {e}")))?,
            nonce: field("Nonce")?,
            issued_at: time("Issued At")?.ok_or_else(|| bad("no `Issued At:` line"))?,
            expires_at: time("Expiration Time")?,
            not_before: time("Not Before")?,
        })
    }

    fn check(&self, domain: &str, uri: &str, chain_id: u64, now: u64) -> Result<(), Error> {
        if self.domain != domain {
            return Err(Error::Domain {
                found: self.domain.clone(),
                expected: domain.to_owned(),
            });
        }
        if self.uri != uri {
            return Err(Error::Uri {
                found: self.uri.clone(),
                expected: uri.to_owned(),
            });
        }
        if self.chain_id != chain_id {
            return Err(Error::ChainId {
                found: self.chain_id,
                expected: chain_id,
            });
        }
        let expires = self.expires_at.ok_or(Error::NoExpiry)?;
        if expires <= now {
            return Err(Error::Expired(rfc3339(expires)));
        }
        if let Some(nb) = self.not_before
            && nb > now
        {
            return Err(Error::NotYetValid(rfc3339(nb)));
        }
        if self.issued_at.abs_diff(now) > 600 {
            return Err(Error::IssuedAt(rfc3339(self.issued_at)));
        }
        Ok(())
    }
}

/// Checks that `signature` (65 bytes) is `address`'s EIP-191 signature of `text`.
pub fn verify(text: &str, signature: &[u8], address: Address) -> Result<(), Error> {
    let sig = Signature::try_from(signature).map_err(|e| Error::Signature(e.to_string()))?;
    let signer = sig
        .recover_address_from_msg(text.as_bytes())
        .map_err(|e| Error::Signature(e.to_string()))?;
    if signer != address {
        return Err(Error::WrongSigner { signer, address });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use alloy::signers::{SignerSync, local::PrivateKeySigner};
    use proptest::prelude::*;

    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn sample(address: Address) -> Message {
        Message {
            domain: "node.example.org:8690".into(),
            address,
            uri: "hanzo-node://0xab".into(),
            chain_id: 31337,
            nonce: "n0nce".into(),
            issued_at: NOW,
            expires_at: Some(NOW + 600),
            not_before: None,
        }
    }

    #[test]
    fn a_signed_message_round_trips_and_verifies() {
        let key = PrivateKeySigner::random();
        let m = sample(key.address());
        let text = message(&m);
        let parsed = Message::parse(&text).unwrap();
        assert_eq!(parsed, m);
        parsed.check(&m.domain, &m.uri, 31337, NOW + 1).unwrap();
        let sig = key.sign_message_sync(text.as_bytes()).unwrap();
        verify(&text, &sig.as_bytes(), key.address()).unwrap();
        // Another signer, or another text, does not verify.
        let other = PrivateKeySigner::random();
        let sig2 = other.sign_message_sync(text.as_bytes()).unwrap();
        assert!(matches!(
            verify(&text, &sig2.as_bytes(), key.address()),
            Err(Error::WrongSigner { .. })
        ));
        assert!(verify(&format!("{text} "), &sig.as_bytes(), key.address()).is_err());
        assert!(verify(&text, &[0u8; 10], key.address()).is_err());
    }

    #[test]
    fn checks_name_what_is_wrong() {
        let m = sample(Address::repeat_byte(1));
        let e = m.check("other:1", &m.uri, 31337, NOW).unwrap_err();
        assert!(
            e.to_string()
                .contains("for domain \"node.example.org:8690\""),
            "{e}"
        );
        let e = m.check(&m.domain, &m.uri, 1, NOW).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SIWE message is for chain id 31337, but this node follows chain 1"
        );
        let e = m.check(&m.domain, &m.uri, 31337, NOW + 601).unwrap_err();
        assert!(matches!(e, Error::Expired(_)), "{e}");
        let e = m
            .check(&m.domain, "hanzo-node://0xcd", 31337, NOW)
            .unwrap_err();
        assert!(matches!(e, Error::Uri { .. }), "{e}");
        let no_expiry = Message {
            expires_at: None,
            ..m.clone()
        };
        assert_eq!(
            no_expiry.check(&m.domain, &m.uri, 31337, NOW),
            Err(Error::NoExpiry)
        );
    }

    #[test]
    fn malformed_messages_are_errors() {
        assert!(matches!(Message::parse(""), Err(Error::Malformed(_))));
        assert!(matches!(
            Message::parse(&"x".repeat(MAX_MESSAGE_BYTES + 1)),
            Err(Error::TooLong(_))
        ));
        let text = message(&sample(Address::repeat_byte(1)));
        let no_nonce: String = text
            .lines()
            .filter(|l| !l.starts_with("Nonce"))
            .collect::<Vec<_>>()
            .join("\n");
        let e = Message::parse(&no_nonce).unwrap_err();
        assert!(e.to_string().contains("no `Nonce:` line"), "{e}");
    }

    proptest! {
        #[test]
        fn mutated_messages_round_trip_or_are_errors(s in crate::fuzz::mutated_text(message(&Message {
            domain: "node.example.org:8690".into(),
            address: alloy::primitives::Address::repeat_byte(0xab),
            uri: "https://node.example.org:8690".into(),
            chain_id: 31337,
            nonce: "a1b2c3d4e5f6a7b8".into(),
            issued_at: 1_700_000_000,
            expires_at: Some(1_700_000_300),
            not_before: Some(1_699_999_999),
        }))) {
            if let Ok(m) = Message::parse(&s) {
                prop_assert_eq!(Message::parse(&message(&m)), Ok(m));
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,600}") {
            let _ = Message::parse(&s);
        }
    }
}
