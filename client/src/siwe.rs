//! Sign-In with Ethereum (EIP-4361) messages: the text a wallet signs, with every
//! field of the EIP. The node's parser and checks of a message live in the node.

use alloy::primitives::Address;

/// A SIWE message, field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    /// The optional `scheme://` before the domain (`https`).
    pub scheme: Option<String>,
    /// The authority the message is for: the dApp's (or the node's) host and port.
    pub domain: String,
    /// The account signing in.
    pub address: Address,
    /// The human-readable line the wallet shows, if any (one line).
    pub statement: Option<String>,
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
    /// `Request ID:`.
    pub request_id: Option<String>,
    /// `Resources:`, one URI per `- ` line.
    pub resources: Vec<String>,
}

/// What follows the domain on a SIWE message's first line.
pub const HEADER: &str = " wants you to sign in with your Ethereum account:";

/// The text of `m`, laid out as EIP-4361 says (and as viem's `createSiweMessage`
/// writes it).
pub fn message(m: &Message) -> String {
    let scheme = m
        .scheme
        .as_deref()
        .map(|s| format!("{s}://"))
        .unwrap_or_default();
    let statement = m
        .statement
        .as_deref()
        .map(|s| format!("{s}\n"))
        .unwrap_or_default();
    let mut text = format!(
        "{scheme}{}{HEADER}\n{}\n\n{statement}\nURI: {}\nVersion: 1\nChain ID: {}\nNonce: {}\nIssued At: {}",
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
    if let Some(id) = &m.request_id {
        text.push_str(&format!("\nRequest ID: {id}"));
    }
    if !m.resources.is_empty() {
        text.push_str("\nResources:");
        for r in &m.resources {
            text.push_str(&format!("\n- {r}"));
        }
    }
    text
}

/// `secs` as an RFC 3339 time.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}
