//! Per-peer limits: token buckets for messages and bytes, and a cap on concurrent
//! transfers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::bucket::Bucket;

/// Limits for every peer.
#[derive(Debug)]
pub struct Limits {
    messages_per_sec: f64,
    bytes_per_sec: f64,
    transfers: usize,
    peers: Mutex<HashMap<PeerId, Peer>>,
}

#[derive(Debug)]
struct Peer {
    messages: Bucket,
    bytes: Arc<Mutex<Bucket>>,
    transfers: Arc<Semaphore>,
}

impl Limits {
    /// Limits of `messages_per_sec`, `bytes_per_sec` and `transfers` per peer.
    pub fn new(messages_per_sec: u32, bytes_per_sec: u64, transfers: usize) -> Self {
        Self {
            messages_per_sec: f64::from(messages_per_sec),
            #[allow(clippy::cast_precision_loss)] // a rate; precision is irrelevant
            bytes_per_sec: bytes_per_sec as f64,
            transfers,
            peers: Mutex::default(),
        }
    }

    fn with<T>(&self, peer: PeerId, f: impl FnOnce(&mut Peer) -> T) -> T {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = peers.entry(peer).or_insert_with(|| Peer {
            messages: Bucket::new(self.messages_per_sec),
            bytes: Arc::new(Mutex::new(Bucket::new(self.bytes_per_sec))),
            transfers: Arc::new(Semaphore::new(self.transfers)),
        });
        f(entry)
    }

    /// Whether one more gossip message from `peer` is within its rate.
    pub fn message(&self, peer: PeerId) -> bool {
        self.with(peer, |p| p.messages.try_take(1.0, Instant::now()))
    }

    /// A transfer slot for `peer`, if it has one free.
    pub fn transfer(&self, peer: PeerId) -> Option<OwnedSemaphorePermit> {
        self.with(peer, |p| p.transfers.clone().try_acquire_owned().ok())
    }

    /// Waits until `n` more bytes may be sent to `peer`.
    pub async fn send(&self, peer: PeerId, n: usize) {
        let bucket = self.with(peer, |p| p.bytes.clone());
        #[allow(clippy::cast_precision_loss)] // a chunk size
        let wait = bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(n as f64, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Forgets a peer that disconnected.
    pub fn forget(&self, peer: &PeerId) {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        peers.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfers_per_peer_are_capped() {
        let limits = Limits::new(1, 1, 2);
        let peer = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        let a = limits.transfer(peer);
        let b = limits.transfer(peer);
        assert!(a.is_some() && b.is_some());
        assert!(limits.transfer(peer).is_none());
        assert!(
            limits
                .transfer(
                    libp2p::identity::Keypair::generate_ed25519()
                        .public()
                        .to_peer_id()
                )
                .is_some(),
            "other peers unaffected"
        );
        drop(a);
        assert!(limits.transfer(peer).is_some());
    }
}
