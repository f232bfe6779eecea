//! Per-peer limits: token buckets for messages and bytes, and a cap on concurrent
//! transfers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A token bucket: `rate` tokens per second, holding at most one second's worth.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: rate,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt; returns how long to wait until the debt is
    /// paid.
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

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
    fn bucket_allows_its_rate_then_refuses_then_refills() {
        let start = Instant::now();
        let mut b = Bucket::new(3.0);
        assert!((0..3).all(|_| b.try_take(1.0, start)));
        assert!(!b.try_take(1.0, start));
        assert!(b.try_take(1.0, start + Duration::from_millis(400)));
        // Debt is paid back at the rate.
        let mut b = Bucket::new(100.0);
        assert_eq!(b.take(100.0, start), Duration::ZERO);
        assert_eq!(b.take(50.0, start), Duration::from_millis(500));
    }

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
