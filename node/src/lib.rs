//! hanzo-node: a validator node for a network of staked operators.
//!
//! Everything the node allows is decided by state on an EVM chain: `chain` reads it,
//! `acl` answers every permission question from it. See `HACKING.md` for the module
//! map.

pub mod acl;
pub mod bucket;
pub mod chain;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod deploy;
pub mod devnet;
pub mod dns;
pub mod eigen;
#[cfg(test)]
mod fuzz;
pub mod git;
pub mod health;
pub mod http;
pub mod inference;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod p2p;
pub mod remote;
pub mod rpc;
pub mod store;
pub mod tasks;

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Locks `m`, taking the data even if a thread panicked while holding it (every
/// critical section here leaves the data consistent).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
