//! Stake-gated connections: a behaviour that refuses every connection whose remote
//! PeerId is not the node key of an operator with active stake.

use std::{
    collections::HashSet,
    convert::Infallible,
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    swarm::{
        ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
        THandlerOutEvent, ToSwarm, dummy,
    },
};
use tracing::debug;

use super::TARGET;
use crate::{acl::Snapshot, keys::NodeId};

/// The PeerId of node key `key` (an ed25519 public key), if it is a valid key.
pub fn peer_id(key: &NodeId) -> Option<PeerId> {
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key.0).ok()?;
    Some(libp2p::identity::PublicKey::from(public).to_peer_id())
}

/// The peers the ACL allows: active operators' node keys.
pub fn allowed(snapshot: &Snapshot) -> HashSet<PeerId> {
    snapshot
        .active_operators()
        .filter_map(|(_, op)| peer_id(&op.node_key))
        .collect()
}

/// Refuses connections with peers not in `allowed`, or banned.
pub struct Gate {
    /// The peers that may connect, from the newest ACL.
    pub allowed: HashSet<PeerId>,
    /// Operators' nodes banned for misbehaving (see `replicator`).
    pub banned: HashSet<PeerId>,
    /// Connections refused.
    pub denied: prometheus_client::metrics::counter::Counter,
}

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is not the node key of an operator with active stake")]
pub struct NotAnOperator(PeerId);

impl Gate {
    fn check(&self, peer: PeerId, addr: &Multiaddr) -> Result<THandler<Self>, ConnectionDenied> {
        if self.allowed.contains(&peer) && !self.banned.contains(&peer) {
            return Ok(dummy::ConnectionHandler);
        }
        self.denied.inc();
        debug!(target: TARGET, %peer, %addr, "closing connection: not an active operator's node key");
        Err(ConnectionDenied::new(NotAnOperator(peer)))
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, remote_addr)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, addr)
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
