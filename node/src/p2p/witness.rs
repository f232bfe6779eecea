//! Quorum pushes over `/hanzo/witness/1`: the origin of a push that asks for a
//! quorum has the other replicas hold it first ([`Phase::Hold`]: verify, fetch the
//! objects from the origin, store them and the certificates, move no ref, answer
//! with a signed receipt), then, once it applied the push itself, tells them to
//! apply it ([`Phase::Apply`]) before its pusher hears `ok`. What is checked and
//! stored is `git`'s business; this is the transport.

use std::{sync::Weak, time::Duration};

use futures_util::{StreamExt, future::BoxFuture, stream::FuturesUnordered};
use libp2p::{PeerId, Stream, StreamProtocol, futures::AsyncWriteExt as _};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::{Shared, TARGET, fetch, gate, open, wire, within};
use crate::{
    git::{
        Update,
        quorum::{Gathered, Receipt, Witnesses},
    },
    keys::NodeId,
};

/// The protocol's name.
pub(super) const PROTOCOL: StreamProtocol = StreamProtocol::new("/hanzo/witness/1");

/// What the origin asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Verify and store the update, move nothing, and answer with a receipt.
    Hold,
    /// The origin applied it: apply it too.
    Apply,
}

/// A request on the witness protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    /// What to do.
    pub phase: Phase,
    /// The update.
    pub update: Update,
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Answer {
    /// Held: the replica's receipt.
    Receipt(Receipt),
    /// Applied.
    Applied,
    /// Not done, and why.
    Refused(String),
}

/// The other replicas, reached over the witness protocol: what `git` gathers a
/// quorum from. `git` holds it, so it holds the p2p side weakly (no cycle keeps the
/// node's store open after a stop).
pub(super) struct Witnessing {
    pub(super) shared: Weak<Shared>,
    pub(super) node: NodeId,
}

impl Witnessing {
    /// The other replicas of repo `repo`: the nodes the ACL says should hold it.
    fn others(&self, shared: &Shared, repo: u64) -> Vec<NodeId> {
        let snapshot = shared.git.acl_snapshot();
        let Some(r) = snapshot.state.repos.get(&repo) else {
            return Vec::new();
        };
        snapshot
            .replicators(&r.name)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| *n != self.node)
            .collect()
    }
}

impl Witnesses for Witnessing {
    fn gather(
        &self,
        update: Update,
        want: Option<usize>,
        timeout: Duration,
    ) -> BoxFuture<'static, Gathered> {
        let Some(shared) = self.shared.upgrade() else {
            return Box::pin(async { Gathered::default() });
        };
        let nodes = self.others(&shared, update.repo);
        Box::pin(async move {
            let mut out = Gathered {
                asked: nodes.len(),
                ..Gathered::default()
            };
            let want = want.unwrap_or(nodes.len());
            let mut asks: FuturesUnordered<_> = nodes
                .into_iter()
                .map(|node| {
                    let (shared, update) = (shared.clone(), update.clone());
                    async move { (node, ask(&shared, node, Phase::Hold, update).await) }
                })
                .collect();
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            while out.receipts.len() < want {
                tokio::select! {
                    next = asks.next() => match next {
                        None => break,
                        Some((node, Ok(Answer::Receipt(r))))
                            if r.node == node && shared.git.check_receipt(&update, &r) =>
                        {
                            out.receipts.push(r);
                        }
                        Some((node, Ok(Answer::Receipt(_)))) => {
                            out.refused.push((node, "its receipt does not verify".into()));
                        }
                        Some((node, Ok(Answer::Applied))) => {
                            out.refused.push((node, "it answered with the wrong phase".into()));
                        }
                        Some((node, Ok(Answer::Refused(why)) | Err(why))) => {
                            debug!(target: TARGET, %node, %why, "a replica did not hold an update");
                            out.refused.push((node, why));
                        }
                    },
                    () = &mut deadline => break,
                }
            }
            out
        })
    }

    fn commit(
        &self,
        update: Update,
        nodes: Vec<NodeId>,
        timeout: Duration,
    ) -> BoxFuture<'static, ()> {
        let Some(shared) = self.shared.upgrade() else {
            return Box::pin(async {});
        };
        Box::pin(async move {
            let asks = nodes.into_iter().map(|node| {
                let (shared, update) = (shared.clone(), update.clone());
                async move {
                    if let Err(why) = ask(&shared, node, Phase::Apply, update).await {
                        debug!(target: TARGET, %node, %why, "a replica did not apply an update it held; gossip and catch-up will bring it");
                    }
                }
            });
            let _ = tokio::time::timeout(timeout, futures_util::future::join_all(asks)).await;
        })
    }
}

/// Sends `node` a `phase` request for `update` and reads its answer (the caller
/// bounds the whole exchange in time).
async fn ask(
    shared: &Shared,
    node: NodeId,
    phase: Phase,
    update: Update,
) -> Result<Answer, String> {
    let peer = gate::peer_id(&node).ok_or_else(|| format!("node key {node} is no ed25519 key"))?;
    let mut stream = open(shared, peer, PROTOCOL, &Request { phase, update }).await?;
    let answer = wire::read_frame(&mut stream, "witness answer", wire::MAX_REQUEST)
        .await
        .map_err(|e| e.to_string())?;
    let _ = stream.close().await;
    Ok(answer)
}

/// Serves one witness request from `peer` (an active operator's node: the gate lets
/// no one else connect).
pub(super) async fn serve(shared: &Shared, peer: PeerId, mut stream: Stream) -> Result<(), String> {
    let deadline = shared.stream_timeout;
    let request: Request = within(
        deadline,
        "read witness request",
        wire::read_frame(&mut stream, "witness request", wire::MAX_REQUEST),
    )
    .await?;
    let phase = request.phase;
    let answer = act(shared, peer, request)
        .await
        .unwrap_or_else(Answer::Refused);
    debug!(target: TARGET, %peer, ?phase, ?answer, "witness request served");
    within(
        deadline,
        "send witness answer",
        wire::write_frame(&mut stream, &answer),
    )
    .await?;
    within(deadline, "close", stream.close()).await
}

async fn act(shared: &Shared, peer: PeerId, request: Request) -> Result<Answer, String> {
    let update = request.update;
    let plan = shared
        .git
        .plan(update.clone())
        .await
        .map_err(|e| e.to_string())?;
    let Some(plan) = plan else {
        // It has all of it already.
        return Ok(match request.phase {
            Phase::Hold => Answer::Receipt(shared.git.receipt(&update)),
            Phase::Apply => Answer::Applied,
        });
    };
    let incoming = if plan.wants.is_empty() {
        None
    } else {
        Some(
            fetch(shared, peer, &plan)
                .await
                .map_err(|e| e.to_string())?,
        )
    };
    match request.phase {
        Phase::Hold => shared
            .git
            .hold_replica(plan, incoming)
            .await
            .map(|()| Answer::Receipt(shared.git.receipt(&update)))
            .map_err(|e| e.to_string()),
        Phase::Apply => shared
            .git
            .commit(plan, incoming)
            .await
            .map(|_| Answer::Applied)
            .map_err(|e| e.to_string()),
    }
}
