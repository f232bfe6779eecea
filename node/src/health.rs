//! Whether the node is ready, and the health of each of its parts: read by
//! `/readiness`, gRPC `GetHealth` and the EigenLayer node API (`/eigen/node/*`), and
//! exported as `hanzo_node_ready` and the spec's `eigen_performance_score` and
//! `eigen_registered_stakes`.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    acl::Acl,
    chain::Status,
    dns,
    inference::Inference,
    keys::NodeId,
    metrics::{self, Reading},
    p2p::P2p,
    tasks::Failure,
};

/// A part's state, as the EigenLayer node API names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum State {
    /// Working.
    Up,
    /// Starting: not working yet, expected to be soon.
    Initializing,
    /// Not working.
    Down,
}

impl State {
    /// The HTTP status the EigenLayer node API answers for it.
    pub fn http_status(self) -> u16 {
        match self {
            Self::Up => 200,
            Self::Initializing => 206,
            Self::Down => 503,
        }
    }
}

/// One part of the node and how it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Service {
    /// Stable id (`chain-sync`, `git`, `p2p`, `rpc`, `dns`, `deploy`, `inference`).
    pub id: &'static str,
    /// Display name.
    pub name: &'static str,
    /// What it does, and why it is not up when it is not.
    pub description: String,
    /// Up, Initializing or Down.
    pub status: State,
}

/// The parts a node runs: what the node assembled.
#[derive(Clone)]
pub struct Parts {
    /// This node's key.
    pub node: NodeId,
    /// The live ACL.
    pub acl: Acl,
    /// The swarm, when p2p is on.
    pub p2p: Option<P2p>,
    /// Whether gRPC is on.
    pub rpc: bool,
    /// The DNS publisher, when DNS is on.
    pub dns: Option<dns::Publisher>,
    /// Whether workloads are on.
    pub deploy: bool,
    /// The models.
    pub inference: Inference,
}

/// The node's readiness. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    /// Chain sync progress.
    pub status: watch::Receiver<Status>,
    /// The critical task whose failure stopped the node, once one did.
    pub failure: watch::Receiver<Option<Failure>>,
    /// Cancelled when the chain sync task has ended.
    pub sync_done: CancellationToken,
    parts: Parts,
}

/// The critical tasks behind each service: a failure of one marks it down.
const TASKS: &[(&str, &[&str])] = &[
    ("chain-sync", &["chain sync"]),
    ("git", &["http", "repos"]),
    ("p2p", &["p2p"]),
    ("rpc", &["grpc"]),
    ("dns", &["dns publisher"]),
    ("deploy", &["deploy enforcer"]),
];

impl Health {
    /// Readiness from these sources; registers `hanzo_node_ready`,
    /// `hanzo_node_critical_task_failed`, `eigen_performance_score` and
    /// `eigen_registered_stakes` into `registry`.
    pub fn new(
        (status, failure): (watch::Receiver<Status>, watch::Receiver<Option<Failure>>),
        sync_done: CancellationToken,
        parts: Parts,
        registry: &metrics::Registry,
    ) -> Self {
        let health = Self {
            status,
            failure,
            sync_done,
            parts,
        };
        let h = health.clone();
        registry.gauges(move || h.readings());
        health
    }

    /// Models configured but not served, one line each (the node is ready without
    /// them).
    pub fn unloaded_models(&self) -> Vec<String> {
        self.parts
            .inference
            .failed()
            .map(|(name, why)| format!("model {name} not loaded: {why}"))
            .collect()
    }

    /// Why the node is not ready, if it is not: a critical task failed (it is
    /// stopping), or the ACL is not synced to within its confirmations.
    pub fn not_ready(&self) -> Option<String> {
        if let Some(f) = self.failure.borrow().clone() {
            return Some(f.to_string());
        }
        let st = self.status.borrow().clone();
        if st.is_synced() {
            return None;
        }
        Some(match (&st.last_error, st.synced) {
            (Some(err), _) => format!("chain sync failing: {err}"),
            (None, None) => format!("not synced yet: head {}, nothing applied", st.head),
            (None, Some(n)) => format!(
                "syncing: ACL at block {n}, head {} ({} confirmations)",
                st.head, st.confirmations
            ),
        })
    }

    /// The node as a whole: Up when every part is; Down when chain sync is (without
    /// the ACL the node can allow nothing) or a critical task failed; else
    /// Initializing (the spec's "partially healthy").
    pub fn overall(&self) -> State {
        let services = self.services();
        if self.failure.borrow().is_some()
            || services
                .iter()
                .any(|s| s.id == "chain-sync" && s.status == State::Down)
        {
            State::Down
        } else if services.iter().all(|s| s.status == State::Up) {
            State::Up
        } else {
            State::Initializing
        }
    }

    /// Every part this node runs, and how it is.
    pub fn services(&self) -> Vec<Service> {
        self.services_given(self.other_operators())
    }

    /// [`Health::services`], with the count of other operators' nodes known.
    fn services_given(&self, others: usize) -> Vec<Service> {
        let p = &self.parts;
        let mut out = vec![
            self.chain_sync(),
            Self::service("git", "git", "git hosting over HTTP"),
        ];
        if let Some(p2p) = &p.p2p {
            out.push(Self::p2p(p2p, others));
        }
        if p.rpc {
            out.push(Self::service("rpc", "gRPC", "gRPC and gRPC-Web API"));
        }
        if let Some(dns) = &p.dns {
            out.push(match dns.published() {
                Some(_) => Self::service("dns", "DNS", "endpoints published on the Mainline DHT"),
                None => Service {
                    status: State::Initializing,
                    ..Self::service("dns", "DNS", "no packet published on the DHT yet")
                },
            });
        }
        if p.deploy {
            out.push(Self::service(
                "deploy",
                "deploy",
                "workloads of staked callers",
            ));
        }
        let models = p.inference.models();
        if !models.is_empty() {
            let failed = self.unloaded_models();
            let served = models.len() - failed.len();
            out.push(Service {
                status: if failed.is_empty() {
                    State::Up
                } else {
                    State::Down
                },
                description: if failed.is_empty() {
                    format!("{served} model(s) loaded")
                } else {
                    format!("{served} model(s) loaded; {}", failed.join("; "))
                },
                ..Self::service("inference", "inference", "")
            });
        }
        if let Some(f) = self.failure.borrow().as_ref() {
            for s in &mut out {
                let tasks = TASKS.iter().find(|(id, _)| *id == s.id);
                if tasks.is_some_and(|(_, names)| names.contains(&f.task)) {
                    s.status = State::Down;
                    s.description = f.to_string();
                }
            }
        }
        out
    }

    fn service(id: &'static str, name: &'static str, what: &str) -> Service {
        Service {
            id,
            name,
            description: what.to_owned(),
            status: State::Up,
        }
    }

    fn chain_sync(&self) -> Service {
        let st = self.status.borrow().clone();
        let (status, description) = if self.sync_done.is_cancelled() {
            (State::Down, "the chain sync task has stopped".to_owned())
        } else if st.is_synced() {
            (
                State::Up,
                format!(
                    "ACL at block {} of head {}",
                    st.synced.unwrap_or(0),
                    st.head
                ),
            )
        } else if let Some(err) = &st.last_error {
            (State::Down, format!("chain sync failing: {err}"))
        } else {
            (State::Initializing, self.not_ready().unwrap_or_default())
        };
        Service {
            id: "chain-sync",
            name: "chain sync",
            description,
            status,
        }
    }

    /// Up when connected to another active operator's node, or when there is none
    /// to connect to; Down when there are some and none is connected.
    fn p2p(p2p: &P2p, others: usize) -> Service {
        let peers = p2p.peers().len();
        let description = format!("{peers} of {others} other operators' nodes connected");
        Service {
            status: if peers > 0 || others == 0 {
                State::Up
            } else {
                State::Down
            },
            ..Self::service("p2p", "p2p", &description)
        }
    }

    /// Active operators' nodes other than this one: the peers it should reach.
    fn other_operators(&self) -> usize {
        self.parts
            .acl
            .snapshot()
            .active_operators()
            .filter(|(_, op)| op.node_key != self.parts.node)
            .count()
    }

    fn readings(&self) -> Vec<Reading> {
        let others = self.other_operators();
        let services = self.services_given(others);
        let score = |s: &Service| match s.status {
            State::Up => 1.0,
            State::Initializing => 0.5,
            State::Down => 0.0,
        };
        #[allow(clippy::cast_precision_loss)] // a handful of services
        let performance = 100.0 * services.iter().map(score).sum::<f64>() / services.len() as f64;
        let mut out = vec![
            Reading::new(
                "hanzo_node_ready",
                "1 when the node is ready (ACL synced, no critical task failed), else 0",
                if self.not_ready().is_none() { 1.0 } else { 0.0 },
            ),
            Reading::new(
                "hanzo_node_critical_task_failed",
                "1 once a critical task has failed (the node is stopping), else 0",
                if self.failure.borrow().is_some() {
                    1.0
                } else {
                    0.0
                },
            ),
            Reading::new(
                "eigen_performance_score",
                "EigenLayer AVS node spec: 0-100, the share of the node's parts that are up (initializing counts half)",
                performance,
            ),
        ];
        if self.parts.p2p.is_some() {
            #[allow(clippy::cast_precision_loss)] // a count of operators
            out.push(Reading::new(
                "hanzo_p2p_operators_other",
                "Active operators' nodes other than this one (the peers it should be connected to)",
                others as f64,
            ));
        }
        let stake = self
            .parts
            .acl
            .snapshot()
            .state
            .operator_by_node(&self.parts.node)
            .map_or(0.0, |(_, op)| wei_to_eth(op.balance.stake));
        out.push(
            Reading::new(
                "eigen_registered_stakes",
                "EigenLayer AVS node spec: this node's operator stake in the registry contract, in ETH",
                stake,
            )
            .label("quorum_number", "0")
            .label("quorum_name", "operators"),
        );
        out
    }
}

#[allow(clippy::cast_precision_loss)] // a gauge: float precision is what it shows
fn wei_to_eth(wei: alloy::primitives::U256) -> f64 {
    u128::try_from(wei).map_or(f64::MAX, |w| w as f64 / 1e18)
}
