//! Sign-In with Ethereum (EIP-4361) messages as wallets and dApps write them: a
//! strict parser by the EIP's grammar (bounded), the checks a node makes before it
//! trusts one, and EIP-5573 ReCaps in `Resources`. Pure: the caller supplies the
//! time and what the message must name.
//!
//! A dApp's message names the dApp's own domain (wallets compare it with the page's
//! origin); what binds it to this node is the node's single-use nonce, the chain id,
//! and this node's URI (`hanzo-node://<node key>`) in `URI:`, in `Resources:` or as a
//! ReCap's resource.

use std::collections::BTreeMap;

use alloy::primitives::{Address, Signature};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

/// Longest message accepted.
pub const MAX_MESSAGE_BYTES: usize = 4096;
/// Most `Resources:` lines.
const MAX_RESOURCES: usize = 32;
/// What a ReCap resource starts with.
pub const RECAP_PREFIX: &str = "urn:recap:";
/// How EIP-5573 opens the statement text of a ReCap.
const RECAP_STATEMENT: &str =
    "I further authorize the stated URI to perform the following actions on my behalf:";

/// Why a sign-in message is refused.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("SIWE message is {0} bytes, over the {MAX_MESSAGE_BYTES}-byte limit")]
    TooLong(usize),
    #[error("SIWE message is malformed: {0}")]
    Malformed(String),
    #[error(
        "SIWE message is for domain {found:?}, which this node does not accept (it accepts {accepted}; its operator adds dApp origins to rpc.origins)"
    )]
    Domain { found: String, accepted: String },
    #[error(
        "SIWE message does not name this node: put {node} in its URI or Resources (its URI is {uri:?})"
    )]
    NotForThisNode { uri: String, node: String },
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
    #[error("SIWE message's ReCap is invalid: {0}")]
    Recap(String),
    #[error("signature does not verify: {0}")]
    Signature(String),
    #[error("signature is by {signer}, not by the message's address {address}")]
    WrongSigner { signer: Address, address: Address },
}

pub use hanzo_node_client::siwe::{HEADER, Message, message, rfc3339};

/// What a message must name to sign in to this node.
#[derive(Clone, Copy)]
pub struct Expect<'a> {
    /// Whether a message's `[scheme://]domain` is one the node accepts.
    pub domain: &'a dyn Fn(Option<&str>, &str) -> bool,
    /// What the node accepts, for the refusal.
    pub accepted: &'a str,
    /// This node's URI, `hanzo-node://<node key>`.
    pub node_uri: &'a str,
    /// The chain the node follows.
    pub chain_id: u64,
}

/// A ReCap's grants: resource URI → ability (`namespace/name`) → caveats (any one
/// of them applies; `{}` is no limit).
pub type Grants =
    BTreeMap<String, BTreeMap<String, Vec<serde_json::Map<String, serde_json::Value>>>>;

/// What the node does with a SIWE message: read it, and check it names this node.
pub trait Checks: Sized {
    /// Parses the text of a SIWE message by the EIP-4361 grammar.
    fn parse(text: &str) -> Result<Self, Error>;
    /// Checks that the message names this node and is valid at `now`; returns its
    /// ReCap grants, if it carries a ReCap.
    fn check(&self, expect: &Expect<'_>, now: u64) -> Result<Option<Grants>, Error>;
}

impl Checks for Message {
    fn parse(text: &str) -> Result<Self, Error> {
        if text.len() > MAX_MESSAGE_BYTES {
            return Err(Error::TooLong(text.len()));
        }
        let bad = |s: &str| Error::Malformed(s.to_owned());
        if text.contains('\r') {
            return Err(bad("lines end with LF only"));
        }
        let mut lines = text.split('\n').peekable();
        let first = lines.next().unwrap_or_default();
        let authority = first
            .strip_suffix(HEADER)
            .ok_or_else(|| bad("the first line must be `[scheme://]<domain> wants you to sign in with your Ethereum account:`"))?;
        let (scheme, domain) = match authority.split_once("://") {
            Some((s, d)) => (Some(s), d),
            None => (None, authority),
        };
        if let Some(s) = scheme
            && !(s.starts_with(|c: char| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        {
            return Err(bad(
                "the scheme before the domain is not an RFC 3986 scheme",
            ));
        }
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_graphic() && !"/?#\"<>\\^`{|}".contains(c))
        {
            return Err(Error::Malformed(format!(
                "the domain {domain:?} is not an RFC 3986 authority"
            )));
        }
        let address_line = lines.next().ok_or_else(|| bad("no address line"))?;
        let address = Address::parse_checksummed(address_line, None).map_err(|e| {
            Error::Malformed(format!(
                "address {address_line:?} is not an EIP-55 checksummed address: {e}"
            ))
        })?;
        if lines.next() != Some("") {
            return Err(bad("the address line must be followed by an empty line"));
        }
        // `[ statement LF ] LF`: a statement is one line followed by an empty one, so a
        // statement that reads `URI: …` cannot pass for the URI field. Some libraries
        // leave out the empty line when there is no statement.
        let mut statement = None;
        let next = lines.next().ok_or_else(|| bad("no URI line"))?;
        let uri_line = if next.is_empty() {
            lines.next().ok_or_else(|| bad("no URI line"))?
        } else if lines.peek() == Some(&"") {
            lines.next();
            if next.chars().any(char::is_control) {
                return Err(bad("the statement holds a control character"));
            }
            statement = Some(next.to_owned());
            lines.next().ok_or_else(|| bad("no URI line"))?
        } else {
            next
        };
        let field = |line: Option<&str>, name: &str| -> Result<String, Error> {
            line.and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(": "))
                .map(str::to_owned)
                .ok_or_else(|| Error::Malformed(format!("expected the `{name}:` line here")))
        };
        let uri = field(Some(uri_line), "URI")?;
        if uri.is_empty() || uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("URI is empty or holds a space"));
        }
        if field(lines.next(), "Version")? != "1" {
            return Err(bad("Version must be 1"));
        }
        let chain_id = field(lines.next(), "Chain ID")?;
        let chain_id = chain_id
            .parse()
            .ok()
            .filter(|_| chain_id.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| Error::Malformed(format!("Chain ID {chain_id:?} is not a number")))?;
        let nonce = field(lines.next(), "Nonce")?;
        if nonce.len() < 8 || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("Nonce must be at least 8 letters and digits"));
        }
        let issued_at = time(&field(lines.next(), "Issued At")?, "Issued At")?;
        let mut m = Self {
            scheme: scheme.map(str::to_owned),
            domain: domain.to_owned(),
            address,
            statement,
            uri,
            chain_id,
            nonce,
            issued_at,
            ..Self::default()
        };
        let optional = |name: &str, lines: &mut std::iter::Peekable<std::str::Split<'_, char>>| {
            let line = lines
                .peek()?
                .strip_prefix(name)?
                .strip_prefix(": ")?
                .to_owned();
            lines.next();
            Some(line)
        };
        if let Some(t) = optional("Expiration Time", &mut lines) {
            m.expires_at = Some(time(&t, "Expiration Time")?);
        }
        if let Some(t) = optional("Not Before", &mut lines) {
            m.not_before = Some(time(&t, "Not Before")?);
        }
        m.request_id = optional("Request ID", &mut lines);
        if lines.peek() == Some(&"Resources:") {
            lines.next();
            while let Some(r) = lines.peek().and_then(|l| l.strip_prefix("- ")) {
                if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad("a resource is empty or holds a space"));
                }
                if m.resources.len() == MAX_RESOURCES {
                    return Err(Error::Malformed(format!(
                        "more than {MAX_RESOURCES} resources"
                    )));
                }
                m.resources.push(r.to_owned());
                lines.next();
            }
        }
        if let Some(rest) = lines.next() {
            return Err(Error::Malformed(format!(
                "unexpected line {rest:?} (fields come in the EIP-4361 order: URI, Version, Chain ID, Nonce, Issued At, Expiration Time, Not Before, Request ID, Resources)"
            )));
        }
        Ok(m)
    }

    fn check(&self, expect: &Expect<'_>, now: u64) -> Result<Option<Grants>, Error> {
        if !(expect.domain)(self.scheme.as_deref(), &self.domain) {
            let found = match &self.scheme {
                Some(s) => format!("{s}://{}", self.domain),
                None => self.domain.clone(),
            };
            return Err(Error::Domain {
                found,
                accepted: expect.accepted.to_owned(),
            });
        }
        if self.chain_id != expect.chain_id {
            return Err(Error::ChainId {
                found: self.chain_id,
                expected: expect.chain_id,
            });
        }
        let grants = self.recap()?;
        let named = self.uri == expect.node_uri
            || self.resources.iter().any(|r| r == expect.node_uri)
            || grants
                .as_ref()
                .is_some_and(|g| g.contains_key(expect.node_uri));
        if !named {
            return Err(Error::NotForThisNode {
                uri: self.uri.clone(),
                node: expect.node_uri.to_owned(),
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
        Ok(grants)
    }
}

/// The text EIP-5573 asks a statement to end with for `grants`: per resource and
/// namespace (in order), `(n) '<namespace>': '<ability>', … for '<resource>'.`.
pub fn recap_statement(grants: &Grants) -> String {
    let mut text = RECAP_STATEMENT.to_owned();
    let mut n = 0;
    for (resource, abilities) in grants {
        let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for ability in abilities.keys() {
            if let Some((ns, name)) = ability.split_once('/') {
                by_namespace.entry(ns).or_default().push(name);
            }
        }
        for (ns, names) in by_namespace {
            n += 1;
            let names: Vec<String> = names.iter().map(|a| format!("'{a}'")).collect();
            text.push_str(&format!(
                " ({n}) '{ns}': {} for '{resource}'.",
                names.join(", ")
            ));
        }
    }
    text
}

/// The `urn:recap:` resource carrying `grants`.
pub fn recap_resource(grants: &Grants) -> String {
    let json = serde_json::json!({ "att": grants, "prf": [] });
    format!("{RECAP_PREFIX}{}", URL_SAFE_NO_PAD.encode(json.to_string()))
}

impl Recap for Message {
    fn recap(&self) -> Result<Option<Grants>, Error> {
        // EIP-5573: the ReCap is the last resource.
        let Some(encoded) = self
            .resources
            .last()
            .and_then(|r| r.strip_prefix(RECAP_PREFIX))
        else {
            return Ok(None);
        };
        let bad = |why: String| Error::Recap(why);
        let json = URL_SAFE_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|e| bad(format!("not base64url: {e}")))?;
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Object {
            att: Grants,
            #[serde(default)]
            prf: Vec<serde_json::Value>,
        }
        let object: Object = serde_json::from_slice(&json).map_err(|e| {
            bad(format!(
                "not a ReCap object ({{\"att\": {{…}}, \"prf\": […]}}): {e}"
            ))
        })?;
        if !object.prf.is_empty() {
            return Err(bad(
                "delegated proofs (prf) are not supported: the signer grants directly".into(),
            ));
        }
        for (resource, abilities) in &object.att {
            for (ability, caveats) in abilities {
                if ability
                    .split_once('/')
                    .is_none_or(|(ns, a)| ns.is_empty() || a.is_empty())
                {
                    return Err(bad(format!(
                        "ability {ability:?} of {resource} is not `namespace/name`"
                    )));
                }
                if caveats.is_empty() {
                    return Err(bad(format!(
                        "ability {ability} of {resource} has no caveats (use [{{}}] for none)"
                    )));
                }
            }
        }
        let expected = recap_statement(&object.att);
        if !self
            .statement
            .as_deref()
            .is_some_and(|s| s.ends_with(&expected))
        {
            return Err(bad(format!(
                "the statement must end with the ReCap's text, so the wallet shows what is granted: {expected:?}"
            )));
        }
        Ok(Some(object.att))
    }
}

/// Reading a message's ReCap.
pub trait Recap {
    /// The grants of the ReCap in the last resource, if there is one; checks that the
    /// statement shows them.
    fn recap(&self) -> Result<Option<Grants>, Error>;
}

/// Unix seconds of an RFC 3339 date-time (`2026-11-30T21:00:00Z`,
/// `…T21:00:00.000Z`, `…T23:00:00+02:00`).
fn time(s: &str, name: &str) -> Result<u64, Error> {
    let bad = || Error::Malformed(format!("`{name}:` is not an RFC 3339 time: {s:?}"));
    let b = s.as_bytes();
    if !s.is_ascii()
        || b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, Error> {
        let part = &s[r];
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let h = num(s.len() - 5..s.len() - 3)?;
            let mins = num(s.len() - 2..s.len())?;
            if h > 23 || mins > 59 {
                return Err(bad());
            }
            sign * (h * 3600 + mins * 60)
        }
        _ => return Err(bad()),
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).map_err(|_| bad())
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
    const NODE: &str = "hanzo-node://0xab";

    fn accept(scheme: Option<&str>, domain: &str) -> bool {
        domain == "node.example.org:8690" || (domain == "app.example" && scheme != Some("http"))
    }

    fn expect() -> Expect<'static> {
        Expect {
            domain: &accept,
            accepted: "node.example.org:8690, https://app.example",
            node_uri: NODE,
            chain_id: 31337,
        }
    }

    fn sample(address: Address) -> Message {
        Message {
            domain: "node.example.org:8690".into(),
            address,
            statement: Some("Sign in to a hanzo node.".into()),
            uri: NODE.into(),
            chain_id: 31337,
            nonce: "n0nce123".into(),
            issued_at: NOW,
            expires_at: Some(NOW + 600),
            ..Message::default()
        }
    }

    #[test]
    fn a_signed_message_round_trips_and_verifies() {
        let key = PrivateKeySigner::random();
        let m = sample(key.address());
        let text = message(&m);
        let parsed = Message::parse(&text).unwrap();
        assert_eq!(parsed, m);
        parsed.check(&expect(), NOW + 1).unwrap();
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

    /// Messages as writers lay them out: viem's `createSiweMessage` and the `siwe`
    /// npm and PyPI packages (no statement: two empty lines; milliseconds in times;
    /// the end-to-end tests sign in with the npm ones), a writer that leaves out the
    /// second empty line, and the EIP's own example with a scheme, a statement, a
    /// request id and resources.
    #[test]
    fn messages_from_wallet_libraries_parse() {
        let viem = "app.example wants you to sign in with your Ethereum account:\n0xA0Cf798816D4b9b9866b5330EEa46a18382f251e\n\n\nURI: hanzo-node://0xab\nVersion: 1\nChain ID: 31337\nNonce: a1b2c3d4e5f6a7b8\nIssued At: 2027-01-15T08:00:00.000Z\nExpiration Time: 2027-01-15T08:05:00.000Z";
        let m = Message::parse(viem).unwrap();
        assert_eq!(
            (m.domain.as_str(), m.statement.as_deref()),
            ("app.example", None)
        );
        assert_eq!(m.issued_at, NOW);
        assert_eq!(m.expires_at, Some(NOW + 300));
        m.check(&expect(), NOW).unwrap();

        let one_empty_line = "app.example wants you to sign in with your Ethereum account:\n0xA0Cf798816D4b9b9866b5330EEa46a18382f251e\n\nURI: https://app.example/login\nVersion: 1\nChain ID: 31337\nNonce: a1b2c3d4e5f6a7b8\nIssued At: 2027-01-15T08:00:00Z\nExpiration Time: 2027-01-15T10:05:00+02:00\nResources:\n- hanzo-node://0xab";
        let m = Message::parse(one_empty_line).unwrap();
        assert_eq!(m.uri, "https://app.example/login");
        assert_eq!(m.expires_at, Some(NOW + 300));
        m.check(&expect(), NOW).unwrap();

        let spec = "https://app.example wants you to sign in with your Ethereum account:\n0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2\n\nI accept the ExampleOrg Terms of Service: https://app.example/tos\n\nURI: hanzo-node://0xab\nVersion: 1\nChain ID: 31337\nNonce: 32891756\nIssued At: 2027-01-15T08:00:00Z\nExpiration Time: 2027-01-15T08:10:00Z\nNot Before: 2027-01-15T07:59:00Z\nRequest ID: req-17\nResources:\n- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n- https://app.example/my-web2-claim.json";
        let m = Message::parse(spec).unwrap();
        assert_eq!(m.scheme.as_deref(), Some("https"));
        assert_eq!(m.request_id.as_deref(), Some("req-17"));
        assert_eq!(m.resources.len(), 2);
        assert_eq!(Message::parse(&message(&m)).unwrap(), m);
        m.check(&expect(), NOW).unwrap();
        // The same over plain http is a domain the node does not accept.
        let http = spec.replacen("https://app", "http://app", 1);
        let e = Message::parse(&http)
            .unwrap()
            .check(&expect(), NOW)
            .unwrap_err();
        assert!(matches!(e, Error::Domain { .. }), "{e}");
    }

    #[test]
    fn a_statement_that_reads_like_a_field_is_a_statement() {
        let text = "app.example wants you to sign in with your Ethereum account:\n0xA0Cf798816D4b9b9866b5330EEa46a18382f251e\n\nURI: hanzo-node://0xab\n\nURI: https://elsewhere.example\nVersion: 1\nChain ID: 31337\nNonce: a1b2c3d4e5f6a7b8\nIssued At: 2027-01-15T08:00:00Z\nExpiration Time: 2027-01-15T08:05:00Z";
        let m = Message::parse(text).unwrap();
        assert_eq!(m.statement.as_deref(), Some("URI: hanzo-node://0xab"));
        assert_eq!(m.uri, "https://elsewhere.example");
        let e = m.check(&expect(), NOW).unwrap_err();
        assert!(matches!(e, Error::NotForThisNode { .. }), "{e}");
        // Fields out of order, twice, or after the resources are refused.
        let twice = text.replace("Version: 1", "Version: 1\nVersion: 1");
        assert!(Message::parse(&twice).is_err());
        let swapped = text.replace(
            "Chain ID: 31337\nNonce: a1b2c3d4e5f6a7b8",
            "Nonce: a1b2c3d4e5f6a7b8\nChain ID: 31337",
        );
        assert!(Message::parse(&swapped).is_err());
        let lowercase = text.replace(
            "0xA0Cf798816D4b9b9866b5330EEa46a18382f251e",
            "0xa0cf798816d4b9b9866b5330eea46a18382f251f",
        );
        assert!(Message::parse(&lowercase).is_err());
    }

    #[test]
    fn checks_name_what_is_wrong() {
        let m = sample(Address::repeat_byte(1));
        let other_domain = Message {
            domain: "phish.example".into(),
            ..m.clone()
        };
        let e = other_domain.check(&expect(), NOW).unwrap_err();
        assert!(
            e.to_string().contains("for domain \"phish.example\""),
            "{e}"
        );
        let other_chain = Message {
            chain_id: 1,
            ..m.clone()
        };
        assert_eq!(
            other_chain.check(&expect(), NOW).unwrap_err().to_string(),
            "SIWE message is for chain id 1, but this node follows chain 31337"
        );
        let e = m.check(&expect(), NOW + 601).unwrap_err();
        assert!(matches!(e, Error::Expired(_)), "{e}");
        let other_node = Message {
            uri: "hanzo-node://0xcd".into(),
            ..m.clone()
        };
        let e = other_node.check(&expect(), NOW).unwrap_err();
        assert!(
            e.to_string()
                .contains("put hanzo-node://0xab in its URI or Resources"),
            "{e}"
        );
        let no_expiry = Message {
            expires_at: None,
            ..m.clone()
        };
        assert_eq!(no_expiry.check(&expect(), NOW), Err(Error::NoExpiry));
    }

    #[test]
    fn a_recap_is_read_only_when_the_statement_shows_it() {
        let grants: Grants = serde_json::from_value(serde_json::json!({
            NODE: {"inference/use": [{"max_tokens": 500}], "node/read": [{}]}
        }))
        .unwrap();
        let statement = recap_statement(&grants);
        assert_eq!(
            statement,
            "I further authorize the stated URI to perform the following actions on my behalf: (1) 'inference': 'use' for 'hanzo-node://0xab'. (2) 'node': 'read' for 'hanzo-node://0xab'."
        );
        let m = Message {
            uri: "https://app.example".into(),
            statement: Some(format!("Use my node. {statement}")),
            resources: vec![recap_resource(&grants)],
            ..sample(Address::repeat_byte(1))
        };
        let text = message(&m);
        let parsed = Message::parse(&text).unwrap();
        // The ReCap's resource names the node: that binds the message to it.
        assert_eq!(parsed.check(&expect(), NOW).unwrap(), Some(grants.clone()));
        // A statement that hides the grant is refused.
        let hidden = Message {
            statement: Some("Sign in.".into()),
            ..m.clone()
        };
        let e = hidden.check(&expect(), NOW).unwrap_err();
        assert!(matches!(e, Error::Recap(_)), "{e}");
        let garbage = Message {
            resources: vec![format!("{RECAP_PREFIX}!!")],
            ..m
        };
        assert!(matches!(
            garbage.check(&expect(), NOW),
            Err(Error::Recap(_))
        ));
    }

    #[test]
    fn times_follow_rfc3339() {
        assert_eq!(time("2027-01-15T08:00:00Z", "t"), Ok(NOW));
        assert_eq!(time("2027-01-15T08:00:00.123456Z", "t"), Ok(NOW));
        assert_eq!(time("2027-01-15T09:30:00+01:30", "t"), Ok(NOW));
        assert_eq!(time("2027-01-15T07:00:00-01:00", "t"), Ok(NOW));
        for bad in [
            "2027-01-15 08:00:00Z",
            "2027-13-15T08:00:00Z",
            "2027-01-15T08:00:00",
            "2027-01-15T08:00:00.Z",
            "+027-01-15T08:00:00Z",
        ] {
            assert!(time(bad, "t").is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn mutated_messages_round_trip_or_are_errors(s in crate::fuzz::mutated_text(message(&Message {
            scheme: Some("https".into()),
            domain: "node.example.org:8690".into(),
            address: alloy::primitives::Address::repeat_byte(0xab),
            statement: Some("Sign in.".into()),
            uri: "https://node.example.org:8690".into(),
            chain_id: 31337,
            nonce: "a1b2c3d4e5f6a7b8".into(),
            issued_at: 1_700_000_000,
            expires_at: Some(1_700_000_300),
            not_before: Some(1_699_999_999),
            request_id: Some("r".into()),
            resources: vec!["hanzo-node://0xab".into(), "urn:recap:e30".into()],
        }))) {
            if let Ok(m) = Message::parse(&s) {
                prop_assert_eq!(Message::parse(&message(&m)), Ok(m.clone()));
                let _ = m.recap();
            }
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,600}") {
            let _ = Message::parse(&s);
            let _ = time(&s, "t");
        }
    }
}
