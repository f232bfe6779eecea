//! Sign-In with Ethereum (EIP-4361) messages as the node asks for them: the text a
//! wallet signs. The node's checks of a message live in the node.

use alloy::primitives::Address;

/// The fields of a SIWE message the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The authority the message is for.
    pub domain: String,
    /// The account signing in.
    pub address: Address,
    /// `URI:`.
    pub uri: String,
    /// `Chain ID:`.
    pub chain_id: u64,
    /// `Nonce:`.
    pub nonce: String,
    /// `Issued At:` (unix seconds).
    pub issued_at: u64,
    /// `Expiration Time:` (unix seconds).
    pub expires_at: Option<u64>,
    /// `Not Before:` (unix seconds).
    pub not_before: Option<u64>,
}

/// What follows the domain on a SIWE message's first line.
pub const HEADER: &str = " wants you to sign in with your Ethereum account:";

/// A SIWE message with the given fields, as a wallet would show it.
pub fn message(m: &Message) -> String {
    let mut text = format!(
        "{}{HEADER}\n{}\n\nSign in to a hanzo node.\n\nURI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}",
        m.domain,
        m.address.to_checksum(None),
        m.uri,
        m.chain_id,
        m.nonce,
        rfc3339(m.issued_at)
    );
    if let Some(t) = m.expires_at {
        text.push_str(&format!("\nExpiration Time: {}", rfc3339(t)));
    }
    if let Some(t) = m.not_before {
        text.push_str(&format!("\nNot Before: {}", rfc3339(t)));
    }
    text
}

/// `secs` as an RFC 3339 time.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
