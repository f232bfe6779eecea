//! The chain syncer: reads the contracts' logs in block ranges from the deployment
//! block, applies those at least `confirmations` deep to the ACL state, checkpoints
//! the state with its block hash, and publishes it.
//!
//! Each step first checks that the checkpointed block is still canonical. If it is
//! not (a reorg deeper than `confirmations`), the syncer walks back through the stored
//! checkpoints to the newest one still on the canonical chain, restores it and syncs
//! forward again; with none left it rebuilds from the deployment block. New heads come
//! by subscription on a `ws://` endpoint and by polling otherwise.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use alloy::{
    eips::BlockNumberOrTag,
    primitives::B256,
    providers::{DynProvider, Provider},
    rpc::types::Filter,
};
use futures_util::StreamExt;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Deployment, Error, decode};
use crate::{
    acl::{Acl, BlockRef, Publisher, Snapshot},
    config::ChainConfig,
    metrics::{self, Reading},
    store::{self, Store},
};

const TARGET: &str = "hanzo::chain";
/// Longest wait between retries after RPC errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sync progress, for readiness and metrics.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Status {
    /// Latest block number the RPC reported.
    pub head: u64,
    /// Latest block applied to the ACL.
    pub synced: Option<u64>,
    /// Confirmations required.
    pub confirmations: u64,
    /// The last sync error, cleared by the next success.
    pub last_error: Option<String>,
    /// Reorgs rolled back since start.
    pub reorgs: u64,
}

impl Status {
    /// Whether the ACL reflects every block that is `confirmations` deep.
    pub fn is_synced(&self) -> bool {
        self.last_error.is_none()
            && self
                .synced
                .is_some_and(|s| s + self.confirmations >= self.head)
    }
}

/// The sync actor. Build it with [`Syncer::new`], then [`Syncer::run`] it as a task.
pub struct Syncer {
    provider: DynProvider,
    deployment: Deployment,
    config: ChainConfig,
    store: Arc<Store>,
    acl: Publisher,
    status: watch::Sender<Status>,
    current: Arc<Snapshot>,
    /// Blocks per `eth_getLogs`; shrinks when the endpoint refuses a range.
    range: u64,
    /// The checkpoint write in flight; the next step waits for it.
    writing: Option<JoinHandle<Result<(), crate::store::Error>>>,
    rpc: RpcMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct RpcCall {
    method: &'static str,
    client_version: String,
}

/// The EigenLayer spec's execution-client metrics: JSON-RPC calls to the chain.
struct RpcMetrics {
    total: Family<RpcCall, Counter>,
    duration: Family<RpcCall, Histogram>,
    /// The endpoint's `web3_clientVersion` once it answered (empty when it answered
    /// with an error: it has none).
    client_version: Option<String>,
}

impl RpcMetrics {
    fn new(registry: &metrics::Registry) -> Self {
        let m = Self {
            total: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                    0.001, 2.0, 14,
                ))
            }),
            client_version: None,
        };
        registry.register(
            "eigen_rpc_request",
            "EigenLayer AVS node spec: JSON-RPC calls to the chain's execution client, by method",
            m.total.clone(),
        );
        registry.register(
            "eigen_rpc_request_duration_seconds",
            "EigenLayer AVS node spec: duration of JSON-RPC calls to the execution client, by method",
            m.duration.clone(),
        );
        m
    }
}

/// What one step did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Applied blocks up to `to`; `caught_up` unless more confirmed blocks wait.
    Advanced {
        /// Last block applied.
        to: u64,
        /// Whether every confirmed block is now applied.
        caught_up: bool,
    },
    /// Nothing new is confirmed.
    Idle,
    /// Rolled back to this block (or to before the deployment).
    RolledBack(Option<u64>),
}

/// The ACL is checkpointed at the block it reflects.
impl store::Checkpoint for Snapshot {
    fn block(&self) -> Option<(u64, [u8; 32])> {
        self.block.map(|b| (b.number, b.hash.0))
    }
}

/// Chain sync and ACL gauges (`hanzo_chain_*`, `hanzo_acl_*`), read at scrape time.
fn register_metrics(registry: &metrics::Registry, status: watch::Receiver<Status>, acl: Acl) {
    #[allow(clippy::cast_precision_loss)] // gauges are floats; block numbers fit
    let n = |v: u64| v as f64;
    registry.gauges(move || {
        let st = status.borrow().clone();
        let snap = acl.snapshot();
        let state = &snap.state;
        vec![
            Reading::new(
                "hanzo_chain_head_block",
                "Latest block number reported by the RPC",
                n(st.head),
            ),
            Reading::new(
                "hanzo_chain_synced_block",
                "Latest block applied to the ACL",
                n(st.synced.unwrap_or(0)),
            ),
            Reading::new(
                "hanzo_chain_events_applied",
                "Contract logs applied to the ACL since deployment",
                n(snap.events_applied),
            ),
            Reading::new(
                "hanzo_chain_reorgs",
                "Reorgs deeper than the confirmations rolled back since start",
                n(st.reorgs),
            ),
            Reading::new(
                "hanzo_chain_sync_failing",
                "1 while the last chain sync step failed (the RPC is unreachable or erring), else 0",
                if st.last_error.is_some() { 1.0 } else { 0.0 },
            ),
            Reading::new(
                "hanzo_acl_age_seconds",
                "Seconds since the block the ACL reflects",
                n(crate::unix_now().saturating_sub(snap.block_time)),
            ),
            Reading::new(
                "hanzo_acl_operators",
                "Registered operators",
                n(state.operators.len() as u64),
            ),
            Reading::new(
                "hanzo_acl_identities",
                "Identities",
                n(state.identities.len() as u64),
            ),
            Reading::new("hanzo_acl_repos", "Repositories", n(state.repos.len() as u64)),
        ]
    });
}

impl Syncer {
    /// A syncer resuming from the store's newest checkpoint. Returns the status
    /// receiver alongside.
    pub fn new(
        provider: DynProvider,
        deployment: Deployment,
        config: ChainConfig,
        store: Arc<Store>,
        acl: Publisher,
        registry: &metrics::Registry,
    ) -> Result<(Self, watch::Receiver<Status>), Error> {
        let current: Arc<Snapshot> = Arc::new(store.latest_checkpoint()?.unwrap_or_default());
        if let Some(b) = current.block {
            info!(target: TARGET, block = b.number, events = current.events_applied, "resuming from checkpoint");
        }
        acl.publish(current.clone());
        let status = Status {
            synced: current.block.map(|b| b.number),
            confirmations: config.confirmations,
            ..Default::default()
        };
        let (tx, rx) = watch::channel(status);
        register_metrics(registry, rx.clone(), acl.subscribe());
        let range = config.max_block_range;
        Ok((
            Self {
                provider,
                deployment,
                config,
                store,
                acl,
                status: tx,
                current,
                range,
                writing: None,
                rpc: RpcMetrics::new(registry),
            },
            rx,
        ))
    }

    /// Syncs until `cancel` fires: steps until caught up, then waits for a new head.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.sync_until(&cancel).await;
        if let Err(err) = self.finish_write().await {
            warn!(target: TARGET, %err, "last checkpoint write failed; the next start re-applies those blocks");
        }
    }

    async fn sync_until(&mut self, cancel: &CancellationToken) {
        let mut heads = self.subscribe().await;
        let mut backoff = self.config.poll_interval;
        loop {
            let caught_up = match self.step().await {
                Ok(step) => {
                    backoff = self.config.poll_interval;
                    !matches!(
                        step,
                        Step::Advanced {
                            caught_up: false,
                            ..
                        } | Step::RolledBack(_)
                    )
                }
                Err(err) => {
                    warn!(target: TARGET, %err, retry_in = ?backoff, "sync step failed; serving the last ACL");
                    self.status
                        .send_modify(|s| s.last_error = Some(err.to_string()));
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            if !caught_up {
                if cancel.is_cancelled() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.config.poll_interval) => {}
                Some(_) = async { match heads.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {}
            }
        }
    }

    async fn subscribe(
        &self,
    ) -> Option<futures_util::stream::BoxStream<'static, alloy::rpc::types::Header>> {
        if !self.config.rpc_url.starts_with("ws") {
            return None;
        }
        match self.provider.subscribe_blocks().await {
            Ok(sub) => {
                debug!(target: TARGET, "subscribed to new heads");
                Some(sub.into_stream().boxed())
            }
            Err(err) => {
                debug!(target: TARGET, %err, "no head subscription; polling");
                None
            }
        }
    }

    /// Awaits `call`, JSON-RPC `method`, counted and timed for `eigen_rpc_*`.
    async fn timed<T>(&self, method: &'static str, call: impl IntoFuture<Output = T>) -> T {
        let started = std::time::Instant::now();
        let out = call.await;
        let labels = RpcCall {
            method,
            client_version: self.rpc.client_version.clone().unwrap_or_default(),
        };
        self.rpc.total.get_or_create(&labels).inc();
        let spent = started.elapsed().as_secs_f64();
        self.rpc.duration.get_or_create(&labels).observe(spent);
        out
    }

    /// The next step: check the checkpoint is canonical, then apply one range of
    /// confirmed blocks.
    pub async fn step(&mut self) -> Result<Step, Error> {
        self.finish_write().await?;
        if self.rpc.client_version.is_none() {
            let version = self.timed("web3_clientVersion", self.provider.get_client_version());
            self.rpc.client_version = match version.await {
                Ok(v) => Some(v),
                // The endpoint answered, without a version: ask no more.
                Err(alloy::transports::RpcError::ErrorResp(_)) => Some(String::new()),
                // Not reached: ask again next step.
                Err(_) => None,
            };
        }
        let head = self
            .timed("eth_blockNumber", self.provider.get_block_number())
            .await
            .map_err(|e| Error::Unreachable {
                url: self.config.rpc_url.clone(),
                reason: e.to_string(),
            })?;
        self.status.send_modify(|s| s.head = head);

        let target = head.saturating_sub(self.config.confirmations);
        let from = self
            .current
            .block
            .map_or(self.deployment.block, |b| b.number + 1);
        let checkpoint = self.current.block;
        if target < from {
            if let Some(cp) = checkpoint
                && self.block_hash(cp.number).await? != Some(cp.hash)
            {
                return Ok(Step::RolledBack(self.roll_back().await?));
            }
            self.mark_success();
            return Ok(Step::Idle);
        }
        let to = target.min(from.saturating_add(self.range - 1));
        // The checkpoint check, the logs and the range's last header are independent:
        // one round trip instead of three.
        let started = Instant::now();
        let (canonical, logs, header) = tokio::join!(
            async {
                match checkpoint {
                    Some(cp) => self.block_hash(cp.number).await.map(|h| h == Some(cp.hash)),
                    None => Ok(true),
                }
            },
            self.logs(from, to),
            self.header(to),
        );
        if !canonical? {
            return Ok(Step::RolledBack(self.roll_back().await?));
        }
        let (logs, shortened) = logs?;
        // A shortened range (the endpoint refused a big one) is the new range size,
        // and needs its own header.
        let (to, header) = match shortened {
            Some(end) => {
                self.range = end - from + 1;
                (end, self.header(end).await?)
            }
            None => (to, header?),
        };
        let fetched = started.elapsed();

        let mut next = Snapshot {
            block: Some(BlockRef {
                number: to,
                hash: header.0,
            }),
            block_time: header.1,
            events_applied: self.current.events_applied + logs.len() as u64,
            state: self.current.state.clone(),
        };
        for log in &logs {
            for change in decode(&self.deployment, log)? {
                next.state.apply(change);
            }
        }
        debug!(
            target: TARGET,
            from,
            to,
            logs = logs.len(),
            fetch_ms = ms(fetched),
            apply_ms = ms(started.elapsed() - fetched),
            "applied"
        );
        // Publish first: the ACL is derived state, so if the node dies before the
        // checkpoint lands it re-applies these blocks from the previous one.
        self.current = Arc::new(next);
        self.acl.publish(self.current.clone());
        let (store, snapshot, keep) = (
            self.store.clone(),
            self.current.clone(),
            self.config.checkpoints_kept,
        );
        self.writing = Some(tokio::task::spawn_blocking(move || {
            store.put_checkpoint(&*snapshot, keep)
        }));
        self.mark_success();
        Ok(Step::Advanced {
            to,
            caught_up: to >= target,
        })
    }

    /// Waits for the checkpoint write in flight, if any.
    pub async fn finish_write(&mut self) -> Result<(), Error> {
        if let Some(write) = self.writing.take() {
            let started = Instant::now();
            write.await.map_err(|e| Error::Task(e.to_string()))??;
            debug!(target: TARGET, wait_ms = ms(started.elapsed()), "checkpoint written");
        }
        Ok(())
    }

    fn mark_success(&self) {
        self.status.send_modify(|s| {
            s.synced = self.current.block.map(|b| b.number);
            s.last_error = None;
        });
    }

    /// Logs of `from..=to`, halving the range while the endpoint refuses it as too big;
    /// with the range's new end if it had to shrink.
    async fn logs(
        &self,
        from: u64,
        to: u64,
    ) -> Result<(Vec<alloy::rpc::types::Log>, Option<u64>), Error> {
        let mut end = to;
        loop {
            let filter = Filter::new()
                .address(self.deployment.addresses().to_vec())
                .from_block(from)
                .to_block(end);
            match self
                .timed("eth_getLogs", self.provider.get_logs(&filter))
                .await
            {
                Ok(logs) => return Ok((logs, (end != to).then_some(end))),
                Err(err) if end > from && err.as_error_resp().is_some() => {
                    let range = (end - from + 1).div_ceil(2);
                    end = from + range - 1;
                    debug!(target: TARGET, %err, range, "eth_getLogs refused; halving the range");
                }
                Err(err) => {
                    return Err(Error::Rpc {
                        call: "eth_getLogs",
                        reason: err.to_string(),
                    });
                }
            }
        }
    }

    /// Hash and timestamp of block `number`, if the chain has it.
    async fn block(&self, number: u64) -> Result<Option<(B256, u64)>, Error> {
        let by_number = self
            .provider
            .get_block_by_number(BlockNumberOrTag::Number(number));
        let block = self
            .timed("eth_getBlockByNumber", by_number)
            .await
            .map_err(|e| Error::Rpc {
                call: "eth_getBlockByNumber",
                reason: e.to_string(),
            })?;
        Ok(block.map(|b| (b.header.hash, b.header.timestamp)))
    }

    async fn header(&self, number: u64) -> Result<(B256, u64), Error> {
        self.block(number).await?.ok_or_else(|| Error::Rpc {
            call: "eth_getBlockByNumber",
            reason: format!("block {number} not found"),
        })
    }

    async fn block_hash(&self, number: u64) -> Result<Option<B256>, Error> {
        Ok(self.block(number).await?.map(|(hash, _)| hash))
    }

    /// Restores the newest stored checkpoint still on the canonical chain.
    async fn roll_back(&mut self) -> Result<Option<u64>, Error> {
        let from = self.current.block.map(|b| b.number);
        let mut restored = Snapshot::default();
        for b in self.store.checkpoint_blocks()? {
            if self.block_hash(b.0).await? == Some(b.1.into()) {
                restored = self.store.checkpoint(b)?.unwrap_or_default();
                break;
            }
        }
        match restored.block {
            Some(_) => self
                .store
                .put_checkpoint(&restored, self.config.checkpoints_kept)?,
            None => self.store.clear_checkpoints()?,
        }
        let to = restored.block.map(|b| b.number);
        warn!(target: TARGET, ?from, ?to, "reorg deeper than the confirmations: rolled the ACL back");
        self.current = Arc::new(restored);
        self.acl.publish(self.current.clone());
        self.status.send_modify(|s| {
            s.reorgs += 1;
            s.synced = to;
        });
        Ok(to)
    }
}
