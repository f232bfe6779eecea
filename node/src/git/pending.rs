//! Updates waiting for signatures. A ref rule may ask `k` distinct identities to sign
//! each update of its refs; every signer runs the same `git push --signed` (the same
//! commands, old → new), and the node keeps the update here until the `k`-th
//! signature, which moves the refs with every certificate recorded.
//!
//! While it waits, the update's objects are in the repo and each new tip is shown
//! under `refs/pending/<tip>/<ref without refs/>`, so the other signers can fetch and
//! review what they sign. Nothing here does I/O.

use gix::ObjectId;
use sha2::{Digest, Sha256};

use super::cert::Command;

/// Where pending tips are shown.
pub const PREFIX: &str = "refs/pending/";

/// An update waiting for signatures, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pending {
    /// SHA-256 of each certificate that signed it, one per identity, oldest first.
    pub certs: Vec<[u8; 32]>,
    /// Unix time of its first signature: it is dropped `git.pending_expiry` later.
    pub since: u64,
}

impl Pending {
    /// Decodes a stored record.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        postcard::from_bytes(bytes).map_err(|e| format!("corrupt pending update: {e}"))
    }

    /// Encodes for the store.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data with no maps or floats: encoding cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Whether it has waited longer than `expiry` seconds at `now`.
    pub fn expired(&self, now: u64, expiry: u64) -> bool {
        now.saturating_sub(self.since) > expiry
    }

    /// Adds the signature of certificate `cert`, by identity `signer`, at `now`:
    /// `signer_of` names the identity of each certificate already held, whose earlier
    /// signature (if any) this one replaces.
    pub fn sign(
        mut self,
        cert: [u8; 32],
        signer: u64,
        signer_of: impl Fn(&[u8; 32]) -> Option<u64>,
    ) -> Self {
        self.certs
            .retain(|c| *c != cert && signer_of(c).is_none_or(|s| s != signer));
        self.certs.push(cert);
        self
    }
}

/// The key of the update that `commands` make, the same whoever signs it: SHA-256
/// over the commands in ref order.
pub fn key(commands: &[Command]) -> [u8; 32] {
    let mut lines: Vec<String> = commands
        .iter()
        .map(|c| format!("{} {} {}\n", c.old, c.new, c.name))
        .collect();
    lines.sort_unstable();
    let mut h = Sha256::new();
    h.update(b"hanzo-node pending update\0");
    for line in lines {
        h.update(line.as_bytes());
    }
    h.finalize().into()
}

/// The ref that shows tip `new` of ref `name` while its update waits.
pub fn tip_ref(name: &str, new: ObjectId) -> String {
    format!(
        "{PREFIX}{new}/{}",
        name.strip_prefix("refs/").unwrap_or(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(name: &str, old: u8, new: u8) -> Command {
        Command {
            old: ObjectId::from_bytes_or_panic(&[old; 20]),
            new: ObjectId::from_bytes_or_panic(&[new; 20]),
            name: name.into(),
        }
    }

    #[test]
    fn the_same_commands_make_the_same_key() {
        let (a, b) = (cmd("refs/heads/a", 1, 2), cmd("refs/heads/b", 3, 4));
        assert_eq!(key(&[a.clone(), b.clone()]), key(&[b.clone(), a.clone()]));
        assert_ne!(key(std::slice::from_ref(&a)), key(&[a.clone(), b]));
        assert_ne!(key(&[a]), key(&[cmd("refs/heads/a", 1, 3)]));
        assert_eq!(
            tip_ref(
                "refs/heads/main",
                ObjectId::from_bytes_or_panic(&[0xab; 20])
            ),
            format!("refs/pending/{}/heads/main", "ab".repeat(20))
        );
    }

    #[test]
    fn one_signature_per_identity_the_newest_kept() {
        let signer = |c: &[u8; 32]| Some(u64::from(c[0]));
        let p = Pending {
            certs: vec![],
            since: 10,
        };
        let p = p.sign([1; 32], 1, signer).sign([2; 32], 2, signer);
        // Identity 1 signs again with another certificate: it replaces the first.
        let mut again = [1; 32];
        again[1] = 9;
        let p = p.sign(again, 1, signer).sign([2; 32], 2, signer);
        assert_eq!(p.certs, vec![again, [2; 32]]);
        assert_eq!(Pending::decode(&p.encode()).unwrap(), p);
        assert!(Pending::decode(&[0xff; 3]).is_err());
        assert!(!p.expired(20, 10) && p.expired(21, 10));
    }
}
