//! Secret environment at rest: sealed with ChaCha20-Poly1305 under a key derived from
//! the node key, so the database alone does not reveal them.

use chacha20poly1305::{ChaCha20Poly1305, Key, KeyInit, Nonce, aead::Aead};
use sha2::{Digest, Sha256};

use crate::keys::NodeKey;

const NONCE: usize = 12;

/// Seals and opens secrets for one node.
pub struct Sealer(ChaCha20Poly1305);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// The sealer of `key`'s node.
    pub fn new(key: &NodeKey) -> Self {
        let mut h = Sha256::new();
        h.update(b"hanzo-node deploy secrets v1\0");
        h.update(key.seed().as_slice());
        Self(ChaCha20Poly1305::new(&Key::from(<[u8; 32]>::from(
            h.finalize(),
        ))))
    }

    /// A fresh nonce followed by the ciphertext of `plain`.
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE] = rand::random();
        let mut out = nonce.to_vec();
        // Encryption into a Vec cannot fail for inputs below the cipher's ~256 GiB limit.
        #[allow(clippy::expect_used)]
        out.extend(
            self.0
                .encrypt(Nonce::from_slice(&nonce), plain)
                .expect("in-memory encryption"),
        );
        out
    }

    /// The plaintext of `sealed`, or `None` if another key sealed it or it was altered.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        let (nonce, ct) = sealed.split_at_checked(NONCE)?;
        self.0.decrypt(Nonce::from_slice(nonce), ct).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_only_with_the_same_node_key() {
        let a = Sealer::new(&NodeKey::from_seed(&[1; 32]));
        let sealed = a.seal(b"API_KEY=hunter2");
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(a.open(&sealed).unwrap(), b"API_KEY=hunter2");
        assert_ne!(a.seal(b"x"), a.seal(b"x"), "a fresh nonce each time");
        assert!(
            Sealer::new(&NodeKey::from_seed(&[2; 32]))
                .open(&sealed)
                .is_none()
        );
        let mut bent = sealed.clone();
        *bent.last_mut().unwrap() ^= 1;
        assert!(a.open(&bent).is_none());
        assert!(a.open(&[0; 5]).is_none());
    }
}
