//! Push certificates (`git push --signed`) and the nonces the node hands out for them.
//!
//! A certificate is the text git signs: a header (`certificate version 0.1`,
//! `pusher`, `pushee`, `nonce`, `push-option`s), a blank line, one `old new ref`
//! line per command, then the armored SSH signature.

use std::time::Duration;

use gix::ObjectId;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::sshsig;
use crate::{acl::RepoId, keys::SshKey};

/// The namespace git signs push certificates in.
const NAMESPACE: &str = "git";

/// Why a certificate or nonce was refused.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("push certificate is malformed: {0}")]
    Malformed(String),
    #[error(transparent)]
    Signature(#[from] sshsig::Error),
    #[error("push certificate nonce {0:?} was not issued by this node for this repo")]
    ForeignNonce(String),
    #[error("push certificate nonce {nonce:?} was issued for {what} {theirs}, not {ours}")]
    OtherNonce {
        nonce: String,
        what: &'static str,
        theirs: String,
        ours: String,
    },
    #[error(
        "push certificate was pushed to {pushee:?}, not to repo {repo:?} (its URL ends in /{repo}.git or /{repo})"
    )]
    OtherPushee { pushee: String, repo: String },
    #[error(
        "push certificate was pushed to {0}, which is no operator's registered git URL on this network"
    )]
    UnknownEndpoint(String),
    #[error("push certificate nonce is {age}s old, beyond the {window}s window; push again")]
    StaleNonce { age: u64, window: u64 },
}

fn malformed(what: impl Into<String>) -> Error {
    Error::Malformed(what.into())
}

/// One ref update: `old new name`, the zero id meaning "absent".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The value the pusher saw.
    pub old: ObjectId,
    /// The value to set.
    pub new: ObjectId,
    /// The full ref name, `refs/…`.
    pub name: String,
}

impl Command {
    /// Parses `<old-hex> <new-hex> <ref>`.
    pub fn parse(line: &[u8]) -> Result<Self, Error> {
        let text = std::str::from_utf8(line).map_err(|_| malformed("command is not UTF-8"))?;
        let mut parts = text.splitn(3, ' ');
        let mut id = |what: &str| {
            let hex = parts
                .next()
                .ok_or_else(|| malformed(format!("command {text:?} has no {what} id")))?;
            ObjectId::from_hex(hex.as_bytes())
                .map_err(|_| malformed(format!("{what} id {hex:?} is not 40 hex digits")))
        };
        let old = id("old")?;
        let new = id("new")?;
        let name = parts
            .next()
            .ok_or_else(|| malformed(format!("command {text:?} names no ref")))?;
        if !name.starts_with("refs/")
            || gix::refs::FullName::try_from(name).is_err()
            || name.contains(char::is_whitespace)
        {
            return Err(malformed(format!("{name:?} is not a valid ref name")));
        }
        Ok(Self {
            old,
            new,
            name: name.to_owned(),
        })
    }

    /// Whether the command deletes its ref.
    pub fn is_delete(&self) -> bool {
        self.new.is_null()
    }
}

/// A parsed, not yet verified, push certificate.
#[derive(Debug, Clone)]
pub struct PushCert {
    /// The whole certificate as sent, signature included.
    pub text: Vec<u8>,
    /// The `pusher` line's identity (git puts the signing key's fingerprint there).
    pub pusher: String,
    /// Unix time on the `pusher` line.
    pub timestamp: u64,
    /// The URL pushed to.
    pub pushee: String,
    /// The nonce the node advertised.
    pub nonce: String,
    /// The ref updates.
    pub commands: Vec<Command>,
    /// The push options (`git push -o …`), signed with the rest.
    pub options: Vec<String>,
}

impl PushCert {
    /// Parses a certificate's text (its size is bounded by the caller).
    pub fn parse(text: Vec<u8>) -> Result<Self, Error> {
        let (payload, _) = sshsig::split_armored(&text)?;
        let payload =
            std::str::from_utf8(payload).map_err(|_| malformed("certificate is not UTF-8"))?;
        let mut lines = payload.split_inclusive('\n');
        if lines.next() != Some("certificate version 0.1\n") {
            return Err(malformed("first line is not \"certificate version 0.1\""));
        }
        let (mut pusher, mut pushee, mut nonce) = (None, None, None);
        let mut options = Vec::new();
        for line in lines.by_ref() {
            let line = line
                .strip_suffix('\n')
                .ok_or_else(|| malformed("header ends without a blank line"))?;
            if line.is_empty() {
                break;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "pusher" => pusher = Some(value.to_owned()),
                "pushee" => pushee = Some(value.to_owned()),
                "nonce" => nonce = Some(value.to_owned()),
                "push-option" => options.push(value.to_owned()),
                _ => {} // future headers
            }
        }
        let pusher = pusher.ok_or_else(|| malformed("no pusher line"))?;
        let timestamp = pusher
            .rsplit(' ')
            .nth(1)
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| malformed(format!("pusher line {pusher:?} has no timestamp")))?;
        let mut commands = Vec::new();
        for line in lines {
            let line = line
                .strip_suffix('\n')
                .ok_or_else(|| malformed("command line does not end in a newline"))?;
            commands.push(Command::parse(line.as_bytes())?);
        }
        if commands.is_empty() {
            return Err(malformed("no commands"));
        }
        Ok(Self {
            pusher,
            timestamp,
            pushee: pushee.ok_or_else(|| malformed("no pushee line"))?,
            nonce: nonce.ok_or_else(|| malformed("no nonce line"))?,
            commands,
            options,
            text,
        })
    }

    /// Verifies the signature; returns the signing key.
    pub fn verify(&self) -> Result<SshKey, Error> {
        let (payload, signature) = sshsig::split_armored(&self.text)?;
        Ok(sshsig::verify_armored(payload, signature, NAMESPACE)?)
    }

    /// The base URL the certificate was pushed to, if its `pushee` names repo `repo`:
    /// `<base>/<repo>.git` or `<base>/<repo>` (git writes the URL as the pusher gave
    /// it, credentials removed).
    pub fn pushee_base(&self, repo: &str) -> Result<&str, Error> {
        let url = self.pushee.trim_end_matches('/');
        let path = url.strip_suffix(".git").unwrap_or(url);
        path.strip_suffix(repo)
            .and_then(|b| b.strip_suffix('/'))
            .filter(|b| b.contains("://"))
            .ok_or_else(|| Error::OtherPushee {
                pushee: self.pushee.chars().take(200).collect(),
                repo: repo.to_owned(),
            })
    }

    /// SHA-256 of the certificate text: how records and peers name it.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.text).into()
    }
}

/// What a nonce says in the clear: when it was issued, for which network and repo.
/// Any replica reads this without the issuing node's secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceInfo {
    /// Unix seconds at issue.
    pub secs: u64,
    /// The network's tag (see [`network_tag`]).
    pub network: String,
    /// The repo's token id.
    pub repo: RepoId,
}

impl NonceInfo {
    /// Reads `<secs>-<network>-<repo>-<mac>`.
    pub fn parse(nonce: &str) -> Result<Self, Error> {
        let foreign = || Error::ForeignNonce(nonce.chars().take(64).collect());
        let mut parts = nonce.split('-');
        let (Some(secs), Some(network), Some(repo), Some(_mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(foreign());
        };
        Ok(Self {
            secs: secs.parse().map_err(|_| foreign())?,
            network: network.to_owned(),
            repo: repo.parse().map_err(|_| foreign())?,
        })
    }

    /// Checks that the nonce was issued on `network` for repo `repo`: what a replica,
    /// which cannot check the issuer's MAC, can check.
    pub fn check_bound(&self, nonce: &str, network: &str, repo: RepoId) -> Result<(), Error> {
        let other = |what, theirs: String, ours: String| Error::OtherNonce {
            nonce: nonce.chars().take(64).collect(),
            what,
            theirs,
            ours,
        };
        if self.network != network {
            return Err(other(
                "network",
                self.network.clone(),
                format!("this network ({network})"),
            ));
        }
        if self.repo != repo {
            return Err(other("repo", self.repo.to_string(), repo.to_string()));
        }
        Ok(())
    }
}

/// The tag of the network a deployment id (`<chain id>:<registry>`) names: what
/// nonces carry so certificates from another network are told apart.
pub fn network_tag(deployment: &str) -> String {
    hex::encode(&Sha256::digest(deployment.as_bytes())[..8])
}

/// Issues and checks push-certificate nonces: `<unix secs>-<network>-<repo>-<MAC>`,
/// valid for one repo on one network within a window, checkable without state. The
/// MAC is this node's; the network and repo are readable by every replica.
#[derive(Clone)]
pub struct Nonces {
    key: [u8; 32],
    network: String,
    window: Duration,
}

impl std::fmt::Debug for Nonces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nonces")
            .field("network", &self.network)
            .field("window", &self.window)
            .finish()
    }
}

impl Nonces {
    /// Nonces under `key` (secret to this node) on network `network` (a
    /// [`network_tag`]), valid for `window`.
    pub fn new(key: [u8; 32], network: String, window: Duration) -> Self {
        Self {
            key,
            network,
            window,
        }
    }

    fn mac(&self, repo: RepoId, secs: u64) -> String {
        // HMAC accepts keys of any length.
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        mac.update(self.network.as_bytes());
        mac.update(&[0]);
        mac.update(&repo.to_be_bytes());
        mac.update(&secs.to_be_bytes());
        hex::encode(&mac.finalize().into_bytes()[..20])
    }

    /// A nonce for a push to `repo` at unix time `now`.
    pub fn issue(&self, repo: RepoId, now: u64) -> String {
        format!("{now}-{}-{repo}-{}", self.network, self.mac(repo, now))
    }

    /// Checks that `nonce` was issued by this node for `repo` no longer than the
    /// window before `now`.
    pub fn check(&self, nonce: &str, repo: RepoId, now: u64) -> Result<(), Error> {
        let info = NonceInfo::parse(nonce)?;
        info.check_bound(nonce, &self.network, repo)?;
        let mac = nonce.rsplit('-').next().unwrap_or_default();
        let expected = self.mac(repo, info.secs);
        // Both are hex of a fixed length; compare without early exit.
        if mac.len() != expected.len()
            || mac
                .bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return Err(Error::ForeignNonce(nonce.chars().take(64).collect()));
        }
        let age = now.saturating_sub(info.secs);
        if age > self.window.as_secs() || info.secs > now + 5 {
            return Err(Error::StaleNonce {
                age,
                window: self.window.as_secs(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const OLD: &str = "0000000000000000000000000000000000000000";
    const NEW: &str = "1111111111111111111111111111111111111111";

    fn text(commands: &str) -> Vec<u8> {
        format!(
            "certificate version 0.1\npusher SHA256:abc 1700000000 +0000\npushee http://h/demo.git\nnonce 1-ab\n\n{commands}-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----\n"
        )
        .into_bytes()
    }

    #[test]
    fn parses_header_and_commands() {
        let cert = PushCert::parse(text(&format!("{OLD} {NEW} refs/heads/main\n"))).unwrap();
        assert_eq!(cert.timestamp, 1_700_000_000);
        assert_eq!(cert.nonce, "1-ab");
        assert_eq!(cert.pushee, "http://h/demo.git");
        assert_eq!(cert.commands.len(), 1);
        assert_eq!(cert.commands[0].name, "refs/heads/main");
        assert!(cert.commands[0].old.is_null());
        // The signature block is garbage: parsing succeeds, verifying does not.
        assert!(cert.verify().is_err());
    }

    #[test]
    fn refuses_bad_certificates() {
        for (commands, why) in [
            ("", "no commands"),
            (&format!("{OLD} {NEW} HEAD\n")[..], "not a valid ref name"),
            (
                &format!("{OLD} {NEW} refs/heads/a..b\n")[..],
                "not a valid ref name",
            ),
            (&format!("{OLD} zz refs/heads/main\n")[..], "not 40 hex"),
            (&format!("{OLD} {NEW}\n")[..], "names no ref"),
        ] {
            let err = PushCert::parse(text(commands)).unwrap_err().to_string();
            assert!(err.contains(why), "{commands:?}: {err}");
        }
        let err = PushCert::parse(b"hello".to_vec()).unwrap_err();
        assert!(matches!(err, Error::Signature(sshsig::Error::Missing)));
    }

    #[test]
    fn nonces_bind_network_repo_and_time() {
        let n = Nonces::new([7; 32], "net1".into(), Duration::from_secs(300));
        let nonce = n.issue(1, 1000);
        n.check(&nonce, 1, 1200).unwrap();
        assert!(matches!(
            n.check(&nonce, 2, 1200),
            Err(Error::OtherNonce { what: "repo", .. })
        ));
        // What a replica reads without the secret.
        let info = NonceInfo::parse(&nonce).unwrap();
        assert_eq!((info.secs, info.repo, &info.network[..]), (1000, 1, "net1"));
        info.check_bound(&nonce, "net1", 1).unwrap();
        let err = info.check_bound(&nonce, "net2", 1).unwrap_err().to_string();
        assert!(
            err.contains("issued for network net1, not this network (net2)"),
            "{err}"
        );
        let elsewhere = Nonces::new([7; 32], "net2".into(), Duration::from_secs(300));
        assert!(matches!(
            elsewhere.check(&nonce, 1, 1000),
            Err(Error::OtherNonce {
                what: "network",
                ..
            })
        ));
        // A nonce whose clear part was edited fails the MAC.
        let edited = nonce.replacen("-1-", "-2-", 1);
        assert!(matches!(
            n.check(&edited, 2, 1000),
            Err(Error::ForeignNonce(_))
        ));
        assert!(matches!(
            n.check(&nonce, 1, 1301),
            Err(Error::StaleNonce { age: 301, .. })
        ));
        let other = Nonces::new([8; 32], "net1".into(), Duration::from_secs(300));
        assert!(matches!(
            other.check(&nonce, 1, 1000),
            Err(Error::ForeignNonce(_))
        ));
        assert!(n.check("garbage", 1, 1000).is_err());
        assert!(NonceInfo::parse("1-a-b-c-d").is_err());
    }

    #[test]
    fn pushee_names_the_repo() {
        let cert = |pushee: &str| PushCert {
            pushee: pushee.into(),
            ..PushCert::parse(text(&format!("{OLD} {NEW} refs/heads/main\n"))).unwrap()
        };
        for (pushee, base) in [
            ("http://h:1/demo.git", "http://h:1"),
            ("http://h:1/demo", "http://h:1"),
            ("https://h/git/demo.git/", "https://h/git"),
        ] {
            assert_eq!(cert(pushee).pushee_base("demo").unwrap(), base);
        }
        for pushee in [
            "http://h/other.git",
            "http://h/xdemo.git",
            "demo.git",
            "http://h/demo/x",
        ] {
            let err = cert(pushee).pushee_base("demo").unwrap_err().to_string();
            assert!(err.contains("not to repo \"demo\""), "{pushee}: {err}");
        }
    }

    proptest! {
        #[test]
        fn garbage_certificates_are_errors(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = PushCert::parse(bytes.clone());
            let mut framed = text("");
            framed.splice(0..0, bytes);
            let _ = PushCert::parse(framed);
        }

        #[test]
        fn mutated_certificates_parse_or_are_errors(
            bytes in crate::fuzz::mutated(text(&format!("{OLD} {NEW} refs/heads/main\n{NEW} {OLD} refs/tags/v1\n")))
        ) {
            if let Ok(cert) = PushCert::parse(bytes) {
                prop_assert!(!cert.commands.is_empty());
                prop_assert!(cert.verify().is_err(), "a mutated signature verified");
            }
        }

        #[test]
        fn garbage_commands_are_errors(line in "[0-9a-f ]{0,90}[a-z/.]{0,20}") {
            let _ = Command::parse(line.as_bytes());
        }
    }
}
