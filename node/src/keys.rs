//! Keys: the node key (ed25519), the operator key (secp256k1 in an Ethereum V3
//! keystore), derivation of both from one BIP39 mnemonic, and SSH ed25519 public keys
//! as people put them on their IdentityToken.
//!
//! The node key's 32 public bytes are at once the `nodeKey` registered on-chain, the
//! libp2p PeerId and the pkarr key. It is kept as a hex seed in `node.key` (mode 0600).
//! The operator key is kept only encrypted; a mnemonic is never written to disk.

use std::{fmt, fs, io::Write, path::Path};

use alloy::{
    primitives::B256,
    signers::local::{
        LocalSignerError, MnemonicBuilder, PrivateKeySigner,
        coins_bip39::{English, Mnemonic},
    },
};
use base64::{Engine, engine::general_purpose::STANDARD, engine::general_purpose::STANDARD_NO_PAD};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256, Sha512};
use zeroize::Zeroizing;

/// File name of the node key inside the data dir.
pub const NODE_KEY_FILE: &str = "node.key";
/// File name of the operator keystore inside the data dir.
pub const OPERATOR_KEYSTORE_FILE: &str = "operator.json";
/// SLIP-0010 path of the node key under a mnemonic.
pub const NODE_KEY_PATH: [u32; 4] = [74, 0, 0, 0];
/// BIP32 path of the operator key under a mnemonic.
pub const OPERATOR_KEY_PATH: &str = "m/44'/60'/0'/0/0";

/// What went wrong with a key.
#[allow(missing_docs)] // each variant's #[error] message documents it
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("no node key at {path}: run `hanzo-node init` to create the data dir")]
    MissingNodeKey { path: String },
    #[error("{path} is not a node key: expected 64 hex characters (a 32-byte ed25519 seed)")]
    MalformedNodeKey { path: String },
    #[error(
        "cannot open the operator keystore {path}: wrong password, or not a V3 keystore ({source})"
    )]
    Keystore {
        path: String,
        source: LocalSignerError,
    },
    #[error("invalid private key: expected 32 bytes of hex ({0})")]
    PrivateKey(String),
    #[error("invalid mnemonic: {0}")]
    Mnemonic(String),
    #[error("malformed SSH public key: {0}")]
    Ssh(&'static str),
}

/// The node's ed25519 key.
pub struct NodeKey(ed25519_dalek::SigningKey);

impl NodeKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), seed.as_mut());
        Self::from_seed(&seed)
    }

    /// The key with this 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(seed))
    }

    /// The 32-byte seed (secret).
    pub fn seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public key, as registered on-chain.
    pub fn public(&self) -> NodeId {
        NodeId(self.0.verifying_key().to_bytes())
    }

    /// An ed25519 signature of `message` (callers put a domain tag first).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.0.sign(message).to_bytes()
    }

    /// Reads the key from `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| {
            let path = path.display().to_string();
            match source.kind() {
                std::io::ErrorKind::NotFound => Error::MissingNodeKey { path },
                _ => Error::Io {
                    action: "read",
                    path,
                    source,
                },
            }
        })?);
        let malformed = || Error::MalformedNodeKey {
            path: path.display().to_string(),
        };
        let trimmed = text.trim();
        if trimmed.len() != 64 {
            return Err(malformed());
        }
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(trimmed, seed.as_mut()).map_err(|_| malformed())?;
        Ok(Self::from_seed(&seed))
    }

    /// Writes the key to `path`, readable by the owner only. Refuses to overwrite.
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let io = |source| Error::Io {
            action: "write",
            path: path.display().to_string(),
            source,
        };
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let text = Zeroizing::new(format!("{}\n", hex::encode(self.seed().as_ref())));
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

/// A node's public key: the on-chain `nodeKey`, PeerId and pkarr key.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// As the contracts' `bytes32`.
    pub fn to_b256(self) -> B256 {
        B256::from(self.0)
    }

    /// Whether `signature` is this key's ed25519 signature of `message` (strict:
    /// no malleable or small-order forms).
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&self.0) else {
            return false;
        };
        let Ok(signature) = ed25519_dalek::Signature::from_slice(signature) else {
            return false;
        };
        key.verify_strict(message, &signature).is_ok()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Opens the operator keystore at `path` with `password`.
pub fn load_operator(path: &Path, password: &str) -> Result<PrivateKeySigner, Error> {
    PrivateKeySigner::decrypt_keystore(path, password).map_err(|source| Error::Keystore {
        path: path.display().to_string(),
        source,
    })
}

/// Encrypts `signer`'s key into a V3 keystore at `dir/name`.
pub fn save_operator(
    dir: &Path,
    name: &str,
    signer: &PrivateKeySigner,
    password: &str,
) -> Result<(), Error> {
    let secret = Zeroizing::new(signer.to_bytes().0);
    PrivateKeySigner::encrypt_keystore(
        dir,
        &mut rand::thread_rng(),
        &secret[..],
        password,
        Some(name),
    )
    .map(|_| ())
    .map_err(|source| Error::Keystore {
        path: dir.join(name).display().to_string(),
        source,
    })
}

/// Parses a hex private key (with or without `0x`).
pub fn parse_private_key(hex_key: &str) -> Result<PrivateKeySigner, Error> {
    hex_key
        .trim()
        .parse::<PrivateKeySigner>()
        .map_err(|e| Error::PrivateKey(e.to_string()))
}

/// Both keys derived from one BIP39 mnemonic: the node key by SLIP-0010
/// `m/74'/0'/0'/0'`, the operator key by BIP32 `m/44'/60'/0'/0/0`.
pub fn from_mnemonic(phrase: &str) -> Result<(NodeKey, PrivateKeySigner), Error> {
    let mnemonic = Mnemonic::<English>::new_from_phrase(phrase.trim())
        .map_err(|e| Error::Mnemonic(e.to_string()))?;
    let seed = Zeroizing::new(
        mnemonic
            .to_seed(None)
            .map_err(|e| Error::Mnemonic(e.to_string()))?,
    );
    let node = NodeKey::from_seed(&slip10_ed25519(seed.as_ref(), &NODE_KEY_PATH));
    let operator = MnemonicBuilder::<English>::default()
        .phrase(phrase.trim())
        .derivation_path(OPERATOR_KEY_PATH)
        .and_then(|b| b.build())
        .map_err(|e| Error::Mnemonic(e.to_string()))?;
    Ok((node, operator))
}

/// SLIP-0010 ed25519 derivation; every step is hardened (the only kind ed25519 has).
fn slip10_ed25519(seed: &[u8], path: &[u32]) -> Zeroizing<[u8; 32]> {
    let hmac = |key: &[u8], parts: &[&[u8]]| {
        // HMAC accepts keys of any length, so this cannot fail.
        #[allow(clippy::expect_used)]
        let mut mac = Hmac::<Sha512>::new_from_slice(key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(p);
        }
        let out = mac.finalize().into_bytes();
        let mut key = Zeroizing::new([0u8; 32]);
        let mut chain = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&out[..32]);
        chain.copy_from_slice(&out[32..]);
        (key, chain)
    };
    let (mut key, mut chain) = hmac(b"ed25519 seed", &[seed]);
    for index in path {
        let hardened = (index | 0x8000_0000).to_be_bytes();
        (key, chain) = hmac(chain.as_ref(), &[&[0u8], key.as_ref(), &hardened]);
    }
    key
}

/// An `ssh-ed25519` public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SshKey(pub [u8; 32]);

const SSH_ED25519: &[u8] = b"ssh-ed25519";
/// Longest key line accepted (an ed25519 line is ~100 bytes plus the comment).
const MAX_SSH_LINE: usize = 4096;

impl SshKey {
    /// Parses an OpenSSH public key line: `ssh-ed25519 <base64> [comment]`.
    pub fn parse_line(line: &str) -> Result<Self, Error> {
        if line.len() > MAX_SSH_LINE {
            return Err(Error::Ssh("line longer than 4096 bytes"));
        }
        let mut parts = line.split_whitespace();
        if parts.next() != Some("ssh-ed25519") {
            return Err(Error::Ssh("expected a line starting with \"ssh-ed25519\""));
        }
        let b64 = parts
            .next()
            .ok_or(Error::Ssh("no key after \"ssh-ed25519\""))?;
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| Error::Ssh("key is not valid base64"))?;
        Self::from_wire(&blob)
    }

    /// Parses the SSH wire encoding: string "ssh-ed25519", string key(32).
    pub fn from_wire(blob: &[u8]) -> Result<Self, Error> {
        let mut rest = blob;
        let mut field = || -> Result<&[u8], Error> {
            let (len, tail) = rest
                .split_first_chunk::<4>()
                .ok_or(Error::Ssh("truncated"))?;
            let len = u32::from_be_bytes(*len) as usize;
            if len > tail.len() {
                return Err(Error::Ssh("truncated"));
            }
            let (value, tail) = tail.split_at(len);
            rest = tail;
            Ok(value)
        };
        if field()? != SSH_ED25519 {
            return Err(Error::Ssh("not an ed25519 key"));
        }
        let key: [u8; 32] = field()?
            .try_into()
            .map_err(|_| Error::Ssh("ed25519 key is not 32 bytes"))?;
        if !rest.is_empty() {
            return Err(Error::Ssh("trailing bytes after the key"));
        }
        Ok(Self(key))
    }

    /// The SSH wire encoding.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(51);
        for field in [SSH_ED25519, &self.0[..]] {
            // 11 and 32 bytes: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out
    }

    /// `SHA256:<base64>`, as `ssh-keygen -l` and git's push certificates show it.
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(Sha256::digest(self.to_wire()))
        )
    }

    /// The OpenSSH line, without comment.
    pub fn to_line(&self) -> String {
        format!("ssh-ed25519 {}", STANDARD.encode(self.to_wire()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::Address;

    #[test]
    fn ssh_key_round_trips_and_fingerprints_like_ssh_keygen() {
        // Generated with `ssh-keygen -t ed25519`; `ssh-keygen -lf` printed this fingerprint.
        let line =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID6U3UgmCKNIGeapw6KnSbLlvoRA+jAU0L/p0u280b5Z test";
        let key = SshKey::parse_line(line).unwrap();
        assert_eq!(key.to_line(), line.trim_end_matches(" test"));
        assert_eq!(
            key.fingerprint(),
            "SHA256:ZnGv7N/obtsW79p32cFRnm0nbzZoICUXHkDj2ZcgazE"
        );
    }

    #[test]
    fn ssh_key_rejects_bad_input() {
        for bad in [
            "",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
            "ssh-ed25519",
            "ssh-ed25519 !!!",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAID6U3UgmCKNIGeapw6KnSbLlvoRA",
        ] {
            assert!(SshKey::parse_line(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SshKey::parse_line(&"x".repeat(5000)).is_err());
        assert!(SshKey::from_wire(&[0, 0, 0, 0xff]).is_err());
    }

    #[test]
    fn mnemonic_derivation_matches_known_vectors() {
        let phrase = "test test test test test test test test test test test junk";
        let (node, operator) = from_mnemonic(phrase).unwrap();
        // anvil's first dev account comes from this phrase at m/44'/60'/0'/0/0.
        assert_eq!(
            operator.address(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
                .parse::<Address>()
                .unwrap()
        );
        // Deterministic, and not the BIP32 key.
        let (again, _) = from_mnemonic(phrase).unwrap();
        assert_eq!(node.public(), again.public());
        assert!(from_mnemonic("not a mnemonic").is_err());
    }

    #[test]
    fn slip10_matches_the_spec_test_vector() {
        // SLIP-0010 test vector 1 for ed25519, chain m/0'.
        let seed = hex::decode("000102030405060708090a0b0c0d0e0f").unwrap();
        let key = slip10_ed25519(&seed, &[0]);
        assert_eq!(
            hex::encode(key.as_ref()),
            "68e0fe46dfb67e368c75379acec591dad19df3cde26e63b93a8e704f1dade7a3"
        );
    }

    #[test]
    fn node_key_file_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(NODE_KEY_FILE);
        let key = NodeKey::generate();
        key.save(&path).unwrap();
        assert_eq!(NodeKey::load(&path).unwrap().public(), key.public());
        assert!(key.save(&path).is_err(), "must not overwrite a key");
        fs::write(dir.path().join("bad"), "zz").unwrap();
        assert!(matches!(
            NodeKey::load(&dir.path().join("bad")),
            Err(Error::MalformedNodeKey { .. })
        ));
    }

    #[test]
    fn keystore_round_trips_and_rejects_wrong_password() {
        let dir = tempfile::tempdir().unwrap();
        let signer = PrivateKeySigner::random();
        save_operator(dir.path(), OPERATOR_KEYSTORE_FILE, &signer, "pw").unwrap();
        let path = dir.path().join(OPERATOR_KEYSTORE_FILE);
        assert_eq!(
            load_operator(&path, "pw").unwrap().address(),
            signer.address()
        );
        let err = load_operator(&path, "nope").unwrap_err();
        assert!(err.to_string().contains("wrong password"), "{err}");
    }
}
