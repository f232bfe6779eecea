//! SSH signatures (OpenSSH `PROTOCOL.sshsig`), as `ssh-keygen -Y sign` and git's
//! `gpg.format=ssh` make them: an armored blob holding the signer's public key, a
//! namespace and an ed25519 signature over a hash of the message.

use base64::{Engine, engine::general_purpose::STANDARD};
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256, Sha512};

use crate::keys::SshKey;

const BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const END: &str = "-----END SSH SIGNATURE-----";
const MAGIC: &[u8] = b"SSHSIG";
/// Largest armored signature accepted (an ed25519 one is about 300 bytes).
const MAX_ARMORED: usize = 4096;

/// Why a signature was not accepted.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no SSH signature (expected \"{BEGIN}\" … \"{END}\")")]
    Missing,
    #[error("SSH signature is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "SSH signature uses key type {0:?}; only ssh-ed25519 keys are supported, make one with `ssh-keygen -t ed25519`"
    )]
    KeyType(String),
    #[error("SSH signature is for namespace {found:?}, expected {expected:?}")]
    Namespace { found: String, expected: String },
    #[error(
        "SSH signature by {0} does not verify: the signed text was altered or the signature is forged"
    )]
    Invalid(String),
}

/// The armored signature at the end of `text`: the message before it and the
/// signature block.
pub fn split_armored(text: &[u8]) -> Result<(&[u8], &[u8]), Error> {
    let begin = find_line(text, BEGIN.as_bytes()).ok_or(Error::Missing)?;
    Ok(text.split_at(begin))
}

/// Offset of the first line of `text` that starts with `line`.
fn find_line(text: &[u8], line: &[u8]) -> Option<usize> {
    let mut offset = 0;
    for l in text.split_inclusive(|&b| b == b'\n') {
        if l.starts_with(line) {
            return Some(offset);
        }
        offset += l.len();
    }
    None
}

/// Verifies the armored signature `armored` over `message` in `namespace`; returns
/// the signer's key.
pub fn verify_armored(message: &[u8], armored: &[u8], namespace: &str) -> Result<SshKey, Error> {
    if armored.len() > MAX_ARMORED {
        return Err(Error::Malformed("longer than 4096 bytes"));
    }
    let text = std::str::from_utf8(armored).map_err(|_| Error::Malformed("not text"))?;
    let body = text
        .trim()
        .strip_prefix(BEGIN)
        .and_then(|t| t.strip_suffix(END))
        .ok_or(Error::Missing)?;
    let b64: String = body.split_whitespace().collect();
    let blob = STANDARD
        .decode(b64)
        .map_err(|_| Error::Malformed("not base64"))?;
    verify(message, &blob, namespace)
}

/// Verifies the binary signature `blob` over `message` in `namespace`.
pub fn verify(message: &[u8], blob: &[u8], namespace: &str) -> Result<SshKey, Error> {
    let mut r = Reader(blob);
    if r.take(MAGIC.len())? != MAGIC {
        return Err(Error::Malformed("does not start with SSHSIG"));
    }
    if r.take(4)? != [0, 0, 0, 1] {
        return Err(Error::Malformed("version is not 1"));
    }
    let public = r.string()?;
    let ns = r.string()?;
    let reserved = r.string()?;
    let hash_alg = r.string()?;
    let sig = r.string()?;
    if !r.0.is_empty() {
        return Err(Error::Malformed("trailing bytes"));
    }

    let mut pk = Reader(public);
    let kind = pk.string()?;
    if kind != b"ssh-ed25519" {
        return Err(Error::KeyType(String::from_utf8_lossy(kind).into_owned()));
    }
    let key = SshKey::from_wire(public).map_err(|_| Error::Malformed("bad ed25519 key"))?;
    if ns != namespace.as_bytes() {
        return Err(Error::Namespace {
            found: String::from_utf8_lossy(ns).into_owned(),
            expected: namespace.to_owned(),
        });
    }
    let digest = match hash_alg {
        b"sha512" => Sha512::digest(message).to_vec(),
        b"sha256" => Sha256::digest(message).to_vec(),
        _ => return Err(Error::Malformed("hash algorithm is not sha256 or sha512")),
    };
    let mut s = Reader(sig);
    if s.string()? != b"ssh-ed25519" {
        return Err(Error::Malformed("signature is not ssh-ed25519"));
    }
    let sig_bytes: [u8; 64] = s
        .string()?
        .try_into()
        .map_err(|_| Error::Malformed("ed25519 signature is not 64 bytes"))?;

    let mut signed = Vec::with_capacity(128);
    signed.extend_from_slice(MAGIC);
    for field in [ns, reserved, hash_alg, &digest[..]] {
        put_string(&mut signed, field);
    }
    let vk = VerifyingKey::from_bytes(&key.0).map_err(|_| Error::Invalid(key.fingerprint()))?;
    vk.verify_strict(&signed, &Signature::from_bytes(&sig_bytes))
        .map_err(|_| Error::Invalid(key.fingerprint()))?;
    Ok(key)
}

fn put_string(out: &mut Vec<u8>, field: &[u8]) {
    // Fields here are a namespace, "sha512", and a 64-byte digest.
    #[allow(clippy::cast_possible_truncation)]
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if n > self.0.len() {
            return Err(Error::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn string(&mut self) -> Result<&'a [u8], Error> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Made with `ssh-keygen -t ed25519` and
    // `printf 'hello\n' | ssh-keygen -Y sign -f key -n git`.
    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEpCAXqZb+OjzZ1ckBp1kc40hNyxaOSwimtTY1+z69Wk";
    const SIG: &str = "-----BEGIN SSH SIGNATURE-----
U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAgSkIBeplv46PNnVyQGnWRzjSE3L
Fo5LCKa1NjX7Pr1aQAAAADZ2l0AAAAAAAAAAZzaGE1MTIAAABTAAAAC3NzaC1lZDI1NTE5
AAAAQFiYfgjtRUOXRv9zMp9LlXH08ar+82G/+GCKTx/Wcljs9n7VASyPLEJpUxJW6xDYQw
XSgbNgSXw+fH2AZViTzQc=
-----END SSH SIGNATURE-----
";

    #[test]
    fn verifies_ssh_keygen_signature() {
        let key = verify_armored(b"hello\n", SIG.as_bytes(), "git").unwrap();
        assert_eq!(key, SshKey::parse_line(KEY).unwrap());
        assert!(matches!(
            verify_armored(b"hello!\n", SIG.as_bytes(), "git"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            verify_armored(b"hello\n", SIG.as_bytes(), "file"),
            Err(Error::Namespace { .. })
        ));
        let text = format!("hello\n{SIG}");
        let (msg, sig) = split_armored(text.as_bytes()).unwrap();
        assert_eq!(msg, b"hello\n");
        assert_eq!(sig, SIG.as_bytes());
    }

    proptest! {
        #[test]
        fn garbage_is_an_error_not_a_panic(blob in proptest::collection::vec(any::<u8>(), 0..400)) {
            prop_assert!(verify(b"m", &blob, "git").is_err());
            let _ = verify_armored(b"m", &blob, "git");
        }

        #[test]
        fn any_flipped_byte_is_refused(at in 0usize..200, bit in 0u8..8) {
            let (_, blob) = {
                let body: String = SIG.lines().filter(|l| !l.starts_with("-----")).collect();
                ((), STANDARD.decode(body).unwrap())
            };
            let mut bad = blob.clone();
            let i = at % bad.len();
            bad[i] ^= 1 << bit;
            prop_assert!(verify(b"hello\n", &bad, "git").is_err());
        }
    }
}
