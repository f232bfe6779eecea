//! Read tokens for private repos: the password of git's HTTP basic auth.
//!
//! A token is `<payload>.<signature>`, both base64url: the payload names the repo
//! (or `*`) and an expiry, and the signature is an SSH signature over it in
//! namespace `hanzo-git-read`. `hanzo-node git-credential` (a git credential helper)
//! makes one with `ssh-keygen -Y sign`, so keys in an agent or behind a passphrase
//! work; the node checks it without any state and asks the ACL whether the key may
//! read.

use std::{io::Write, path::Path, process::Stdio};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use super::sshsig;
use crate::keys::SshKey;

/// The namespace read tokens are signed in.
pub const NAMESPACE: &str = "hanzo-git-read";
const HEADER: &str = "hanzo-git-read v1";
/// Longest token accepted.
const MAX_TOKEN: usize = 4096;

/// Why a token was refused.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("read token is malformed: {0}")]
    Malformed(&'static str),
    #[error(transparent)]
    Signature(#[from] sshsig::Error),
    #[error("read token expired {0}s ago; git asks the credential helper for a new one on retry")]
    Expired(u64),
    #[error("read token lives {0}s, longer than this node accepts ({1}s, git.max_token_lifetime)")]
    TooLong(u64, u64),
    #[error("read token is for repo {0:?}, not this one")]
    OtherRepo(String),
}

fn payload(repo: &str, expires: u64) -> String {
    format!("{HEADER}\nrepo {repo}\nexpires {expires}\n")
}

/// Checks `token` for a read of `repo` at unix time `now`; returns the signing key.
pub fn verify(token: &str, repo: &str, now: u64, max_lifetime: u64) -> Result<SshKey, Error> {
    if token.len() > MAX_TOKEN {
        return Err(Error::Malformed("longer than 4096 bytes"));
    }
    let (payload_b64, sig_b64) = token
        .split_once('.')
        .ok_or(Error::Malformed("no '.' between payload and signature"))?;
    let decode = |s: &str| {
        URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| Error::Malformed("not base64url"))
    };
    let (payload, sig) = (decode(payload_b64)?, decode(sig_b64)?);
    let text = std::str::from_utf8(&payload).map_err(|_| Error::Malformed("not text"))?;
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(Error::Malformed("unknown version"));
    }
    let for_repo = lines
        .next()
        .and_then(|l| l.strip_prefix("repo "))
        .ok_or(Error::Malformed("no repo line"))?;
    let expires: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("expires "))
        .and_then(|e| e.parse().ok())
        .ok_or(Error::Malformed("no expiry line"))?;
    if payload != self::payload(for_repo, expires).as_bytes() {
        return Err(Error::Malformed("unexpected lines"));
    }
    let key = sshsig::verify(&payload, &sig, NAMESPACE)?;
    if for_repo != "*" && for_repo != repo {
        return Err(Error::OtherRepo(for_repo.to_owned()));
    }
    if expires < now {
        return Err(Error::Expired(now - expires));
    }
    if expires - now > max_lifetime {
        return Err(Error::TooLong(expires - now, max_lifetime));
    }
    Ok(key)
}

/// Makes a token for `repo` (`*` for any) valid until `expires`, signing with the SSH
/// private key at `key` through `ssh-keygen -Y sign`.
pub fn issue(key: &Path, repo: &str, expires: u64) -> anyhow::Result<String> {
    let payload = payload(repo, expires);
    let mut child = std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run ssh-keygen (install openssh-client): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(payload.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        anyhow::bail!(
            "ssh-keygen -Y sign with {} failed ({})",
            key.display(),
            out.status
        );
    }
    let armored = String::from_utf8(out.stdout)?;
    let b64: String = armored
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let blob = base64::engine::general_purpose::STANDARD.decode(b64.trim())?;
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(blob)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn issued_tokens_verify_with_their_limits() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success());
        let public =
            SshKey::parse_line(&std::fs::read_to_string(key.with_extension("pub")).unwrap())
                .unwrap();
        let token = issue(&key, "demo", 1_000).unwrap();
        assert_eq!(verify(&token, "demo", 900, 600).unwrap(), public);
        assert_eq!(
            verify(&token, "other", 900, 600),
            Err(Error::OtherRepo("demo".into()))
        );
        assert_eq!(verify(&token, "demo", 1_010, 600), Err(Error::Expired(10)));
        assert_eq!(
            verify(&token, "demo", 100, 600),
            Err(Error::TooLong(900, 600))
        );
        let any = issue(&key, "*", 1_000).unwrap();
        assert_eq!(verify(&any, "other", 900, 600).unwrap(), public);
        // A token altered to name another repo no longer verifies.
        let (_, sig) = token.split_once('.').unwrap();
        let forged = format!("{}.{sig}", URL_SAFE_NO_PAD.encode(payload("other", 1_000)));
        assert!(matches!(
            verify(&forged, "other", 900, 600),
            Err(Error::Signature(sshsig::Error::Invalid(_)))
        ));
    }

    proptest! {
        #[test]
        fn garbage_tokens_are_errors(token in ".{0,300}") {
            prop_assert!(verify(&token, "demo", 0, 600).is_err());
        }
    }
}
