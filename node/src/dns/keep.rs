//! Keeping the other operators' packets alive on the DHT.
//!
//! A packet lives on the DHT only while someone puts it again: DHT nodes drop what
//! they hold after a while (Mainline's, after about two hours; this DHT
//! implementation's, when newer records push it out of their bounded store). So each
//! node keeps the newest valid packet of every active operator's node key — in the
//! store, so a restart keeps them — and puts them on the DHT again every
//! `dns.keep_interval`, so an operator that is down stays resolvable from its key.
//!
//! [`Keeper::offer`] is the only way in: a packet is kept when it is signed by an
//! active operator's node key other than this node's (pkarr's packet type checks the
//! signature on every way in) and is newer than the one kept. Packets come from the
//! keeper's own lookups, the DNS server's and the relay's. When an operator leaves the
//! chain's active set its packet is forgotten at the next ACL change. After each put,
//! a probe counts the DHT nodes that hold the packet (or a newer one) and reports it
//! as `hanzo_dns_kept_coverage`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::StreamExt as _;
use pkarr::{PublicKey, SignedPacket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Error, public_key};
use crate::{
    acl::{Acl, Snapshot},
    config::DnsConfig,
    keys::NodeId,
    lock,
    metrics::{Reading, Registry},
    store::Store,
};

const TARGET: &str = "hanzo::dns::keep";
/// Lookups, puts and probes of one round in flight at once.
const PARALLEL: usize = 8;
/// How long after start the first round runs (the ACL has loaded by then).
const FIRST_ROUND: Duration = Duration::from_secs(2);

/// The packets this node keeps for other operators. Cheap to clone.
#[derive(Clone)]
pub struct Keeper {
    inner: Arc<Inner>,
}

struct Inner {
    me: NodeId,
    acl: Acl,
    store: Arc<Store>,
    kept: Mutex<HashMap<NodeId, Kept>>,
}

struct Kept {
    packet: SignedPacket,
    /// DHT nodes that held it (or a newer one) at the last probe.
    coverage: Option<u32>,
}

/// What became of an offered packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// It is the newest known for its key, and kept.
    Kept,
    /// The one kept is as new or newer.
    NotNewer,
    /// Its key is this node's own (the publisher keeps that) or no active
    /// operator's node key.
    NotKept,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("kept", &lock(&self.inner.kept).len())
            .finish()
    }
}

impl Keeper {
    /// The keeper of node `me`, with the packets kept in `store` (those no longer
    /// valid are dropped); registers its gauges in `registry`.
    pub fn open(me: NodeId, acl: Acl, store: Arc<Store>, registry: &Registry) -> Self {
        let mut kept = HashMap::new();
        match store.kept_dns_packets() {
            Ok(rows) => {
                for (key, payload) in rows {
                    match verified(&key, payload) {
                        Some(packet) => {
                            kept.insert(
                                signer(&packet),
                                Kept {
                                    packet,
                                    coverage: None,
                                },
                            );
                        }
                        None => {
                            warn!(target: TARGET, key = %alloy::hex::encode(&key), "dropping a kept DNS packet that does not verify");
                            if let Err(e) = store.remove_kept_dns_packet(&key) {
                                warn!(target: TARGET, err = %e, "cannot drop it from the store");
                            }
                        }
                    }
                }
            }
            Err(e) => {
                warn!(target: TARGET, err = %e, "cannot read the kept DNS packets; starting with none")
            }
        }
        let keeper = Self {
            inner: Arc::new(Inner {
                me,
                acl,
                store,
                kept: Mutex::new(kept),
            }),
        };
        let k = keeper.clone();
        registry.gauges(move || k.readings());
        keeper
    }

    fn readings(&self) -> Vec<Reading> {
        let kept = lock(&self.inner.kept);
        let mut out = vec![Reading::new(
            "hanzo_dns_kept_packets",
            "Other operators' DNS packets this node keeps alive on the DHT",
            kept.len() as f64,
        )];
        for k in kept.values() {
            if let Some(n) = k.coverage {
                out.push(
                    Reading::new(
                        "hanzo_dns_kept_coverage",
                        "DHT nodes holding a kept packet (or a newer one) at the last probe, by node key (z-base-32)",
                        f64::from(n),
                    )
                    .label("node", k.packet.public_key().to_z32()),
                );
            }
        }
        out
    }

    /// The packet kept for `key`, if any.
    pub fn get(&self, key: &PublicKey) -> Option<SignedPacket> {
        lock(&self.inner.kept)
            .get(&NodeId(key.to_bytes()))
            .map(|k| k.packet.clone())
    }

    /// The packet kept for `key` if it was seen (fetched, or confirmed on the DHT)
    /// within its TTL: as fresh as a cached one, so the DHT need not be asked.
    pub fn fresh(&self, key: &PublicKey) -> Option<SignedPacket> {
        lock(&self.inner.kept)
            .get(&NodeId(key.to_bytes()))
            .filter(|k| !k.packet.is_expired(0, u32::MAX))
            .map(|k| k.packet.clone())
    }

    /// Keeps `packet` if it is an active operator's (not this node's) and newer than
    /// the one kept.
    pub fn offer(&self, packet: &SignedPacket) -> Offered {
        let node = signer(packet);
        if node == self.inner.me || !self.inner.acl.snapshot().is_operator(&node) {
            return Offered::NotKept;
        }
        let mut kept = lock(&self.inner.kept);
        if let Some(k) = kept.get_mut(&node)
            && !packet.more_recent_than(&k.packet)
        {
            // Seen again: answers from it count its age from now.
            if packet.is_same_as(&k.packet) && packet.last_seen() > k.packet.last_seen() {
                k.packet.set_last_seen(packet.last_seen());
            }
            return Offered::NotNewer;
        }
        // Written before it is served from memory: a crash keeps what was answered.
        if let Err(e) = self
            .inner
            .store
            .put_kept_dns_packet(&node.0, &packet.to_relay_payload())
        {
            warn!(target: TARGET, %node, err = %e, "cannot store a kept DNS packet; keeping it in memory only");
        }
        debug!(target: TARGET, %node, timestamp = packet.timestamp().as_u64(), "keeping a newer DNS packet");
        kept.insert(
            node,
            Kept {
                packet: packet.clone(),
                coverage: None,
            },
        );
        Offered::Kept
    }

    /// Forgets the packets of keys that are no longer active operators' in `acl`.
    fn forget_departed(&self, acl: &Snapshot) {
        let mut kept = lock(&self.inner.kept);
        let gone: Vec<NodeId> = kept
            .keys()
            .filter(|n| !acl.is_operator(n))
            .copied()
            .collect();
        for node in gone {
            kept.remove(&node);
            if let Err(e) = self.inner.store.remove_kept_dns_packet(&node.0) {
                warn!(target: TARGET, %node, err = %e, "cannot drop a kept DNS packet from the store");
            }
            info!(target: TARGET, %node, "no longer an active operator's key: its DNS packet is no longer kept");
        }
    }

    fn set_coverage(&self, node: &NodeId, timestamp: u64, holders: u32) {
        if let Some(k) = lock(&self.inner.kept)
            .get_mut(node)
            .filter(|k| k.packet.timestamp().as_u64() == timestamp)
        {
            k.coverage = Some(holders);
        }
    }

    /// Runs rounds every `interval` on `client` (lookups and puts) and `probe`
    /// (coverage counts) until `cancel`; forgets departed operators' packets at every
    /// ACL change.
    pub fn spawn(
        &self,
        client: pkarr::Client,
        probe: mainline::async_dht::AsyncDht,
        interval: Duration,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let keeper = self.clone();
        tokio::spawn(async move {
            let mut acl = keeper.inner.acl.clone();
            let mut due = tokio::time::Instant::now() + FIRST_ROUND.min(interval);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = acl.changed() => match changed {
                        Ok(snapshot) => keeper.forget_departed(&snapshot),
                        Err(_) => return,
                    },
                    () = tokio::time::sleep_until(due) => {
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = keeper.round(&client, &probe) => {}
                        }
                        due = tokio::time::Instant::now() + interval;
                    }
                }
            }
        })
    }

    /// One round: for every active operator's key but ours, the newest packet on the
    /// DHT is offered, the newest kept is put on the DHT again, and its holders counted.
    async fn round(&self, client: &pkarr::Client, probe: &mainline::async_dht::AsyncDht) {
        let acl = self.inner.acl.snapshot();
        self.forget_departed(&acl);
        let keys: HashSet<NodeId> = acl
            .active_operators()
            .map(|(_, op)| op.node_key)
            .filter(|n| *n != self.inner.me)
            .collect();
        let kept = futures_util::stream::iter(keys)
            .map(|node| self.keep(client, probe, node))
            .buffer_unordered(PARALLEL)
            .filter(|k| std::future::ready(*k))
            .count()
            .await;
        debug!(target: TARGET, kept, "DNS keep round done");
    }

    /// Looks up, puts again and counts `node`'s packet; whether one is kept.
    async fn keep(
        &self,
        client: &pkarr::Client,
        probe: &mainline::async_dht::AsyncDht,
        node: NodeId,
    ) -> bool {
        let Ok(key) = public_key(&node) else {
            return false;
        };
        if let Ok(found) = client
            .resolve(&key, pkarr::ResolvePolicy::NetworkOnly)
            .await
        {
            self.offer(&found);
        }
        let Some(packet) = self.get(&key) else {
            return false;
        };
        match client.publish(&packet).await {
            Ok(stored) => debug!(target: TARGET, %node, ?stored, "kept DNS packet put again"),
            // A newer one reached the client's cache meanwhile: the next round keeps it.
            Err(pkarr::errors::PublishError::NotMostRecent) => {
                debug!(target: TARGET, %node, "a newer DNS packet is known");
            }
            Err(e) => {
                warn!(target: TARGET, %node, err = %Error::from(e), "cannot put a kept DNS packet again");
            }
        }
        let timestamp = packet.timestamp().as_u64();
        let holders = holders(probe, &key, timestamp).await;
        self.set_coverage(&node, timestamp, holders);
        true
    }
}

/// The node key that signed `packet`, read from its bytes (`SignedPacket::public_key`
/// decompresses the curve point again, a cost the DNS server pays per query otherwise).
fn signer(packet: &SignedPacket) -> NodeId {
    let mut key = [0u8; 32];
    key.copy_from_slice(&packet.as_bytes()[..32]);
    NodeId(key)
}

/// The packet in `payload` (a relay payload) kept for node key `key`, if it verifies.
fn verified(key: &[u8], payload: Vec<u8>) -> Option<SignedPacket> {
    let key = PublicKey::try_from(<[u8; 32]>::try_from(key).ok()?.as_slice()).ok()?;
    SignedPacket::from_relay_payload(&key, &Bytes::from(payload)).ok()
}

/// How many DHT nodes answer with `key`'s packet dated `timestamp` or later.
pub async fn holders(
    probe: &mainline::async_dht::AsyncDht,
    key: &PublicKey,
    timestamp: u64,
) -> u32 {
    let since = i64::try_from(timestamp)
        .unwrap_or(i64::MAX)
        .saturating_sub(1);
    let mut query = probe.get_mutable_detailed(key.as_bytes(), None, Some(since));
    while query.items.next().await.is_some() {}
    query.outcome.recv().await.values
}

/// The DHT node the coverage probe asks through: a client of its own on the same DHT
/// as `config` (pkarr's client does not count who holds a packet).
pub fn probe(config: &DnsConfig) -> Result<mainline::async_dht::AsyncDht, Error> {
    let mut builder = mainline::Dht::builder();
    builder.request_timeout(config.request_timeout);
    if !config.bootstrap.is_empty() {
        builder.bootstrap(&config.bootstrap);
    }
    if let Some(bind) = config.bind {
        builder.bind_address(bind);
    }
    builder
        .build()
        .map(mainline::Dht::as_async)
        .map_err(|e| Error::Client(e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use pkarr::{Keypair, Timestamp};

    use super::*;
    use crate::dns::{Endpoints, keypair, packet};

    fn signed(key: &Keypair, at: u64) -> SignedPacket {
        packet(key, &Endpoints::default(), Timestamp::from(at))
            .unwrap()
            .0
    }

    #[test]
    fn the_signer_is_read_from_the_packet_bytes() {
        let key = Keypair::random();
        assert_eq!(signer(&signed(&key, 1)).0, key.public_key().to_bytes());
    }

    #[test]
    fn a_stored_packet_that_does_not_verify_is_not_loaded() {
        let key = Keypair::random();
        let p = signed(&key, 1_000);
        let good = verified(key.public_key().as_bytes(), p.to_relay_payload().to_vec());
        assert!(good.is_some_and(|g| g.is_same_as(&p)));
        let mut bad = p.to_relay_payload().to_vec();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(verified(key.public_key().as_bytes(), bad).is_none());
        // Under another key, or a key of the wrong length.
        let other = Keypair::random();
        assert!(verified(other.public_key().as_bytes(), p.to_relay_payload().to_vec()).is_none());
        assert!(verified(&[1, 2, 3], p.to_relay_payload().to_vec()).is_none());
        assert!(verified(key.public_key().as_bytes(), Vec::new()).is_none());
    }

    /// An ACL where `nodes` are active operators' keys.
    fn acl(nodes: &[NodeId]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (i, node) in nodes.iter().enumerate() {
            let addr = alloy::primitives::Address::repeat_byte(u8::try_from(i + 1).unwrap());
            snapshot.state.operators.insert(
                addr,
                crate::acl::Operator {
                    node_key: *node,
                    endpoint: String::new(),
                    balance: Default::default(),
                },
            );
            snapshot.state.node_keys.insert(*node, addr);
        }
        snapshot
    }

    #[test]
    fn the_newest_packet_of_an_active_operator_is_kept_across_a_restart_until_it_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let me = crate::keys::NodeKey::generate();
        let (peer, stranger) = (Keypair::random(), Keypair::random());
        let peer_id = NodeId(peer.public_key().to_bytes());
        let (acl, chain) = Acl::new(acl(&[me.public(), peer_id]));
        let registry = Registry::default();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let keeper = Keeper::open(me.public(), acl.clone(), store.clone(), &registry);

        // Our own key is the publisher's; a stranger's is nobody's to keep.
        assert_eq!(keeper.offer(&signed(&keypair(&me), 5)), Offered::NotKept);
        assert_eq!(keeper.offer(&signed(&stranger, 5)), Offered::NotKept);
        // The newer timestamp wins, whatever the order they come in.
        assert_eq!(keeper.offer(&signed(&peer, 2_000)), Offered::Kept);
        assert_eq!(keeper.offer(&signed(&peer, 1_000)), Offered::NotNewer);
        assert_eq!(keeper.offer(&signed(&peer, 2_000)), Offered::NotNewer);
        assert_eq!(keeper.offer(&signed(&peer, 3_000)), Offered::Kept);
        let kept = |k: &Keeper| k.get(&peer.public_key()).map(|p| p.timestamp().as_u64());
        assert_eq!(kept(&keeper), Some(3_000));
        assert!(keeper.get(&stranger.public_key()).is_none());
        // Seen again on the DHT: the kept copy's age counts from then.
        let mut again = signed(&peer, 3_000);
        let later = Timestamp::now() + 5_000_000;
        again.set_last_seen(&later);
        assert_eq!(keeper.offer(&again), Offered::NotNewer);
        assert_eq!(*keeper.get(&peer.public_key()).unwrap().last_seen(), later);
        let text = registry.encode().unwrap();
        assert!(text.contains("hanzo_dns_kept_packets 1"), "{text}");
        keeper.set_coverage(&peer_id, 3_000, 4);
        let text = registry.encode().unwrap();
        assert!(
            text.contains(&format!("node=\"{}\"", peer.public_key().to_z32())),
            "{text}"
        );

        // Reopened (a restart): the same packet, read back and verified.
        drop(keeper);
        let keeper = Keeper::open(me.public(), acl, store.clone(), &Registry::default());
        assert_eq!(kept(&keeper), Some(3_000));

        // The operator leaves the active set: its packet is dropped, also from the store.
        chain.publish(Arc::new(self::acl(&[me.public()])));
        keeper.forget_departed(&keeper.inner.acl.snapshot());
        assert_eq!(kept(&keeper), None);
        assert!(store.kept_dns_packets().unwrap().is_empty());
        assert_eq!(keeper.offer(&signed(&peer, 4_000)), Offered::NotKept);
    }
}
