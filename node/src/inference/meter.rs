//! Usage per caller and model: kept in the store (so it survives restarts), readable
//! by the caller and the node's operator, and exported as Prometheus counters per
//! model.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use alloy::primitives::Address;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use serde::{Deserialize, Serialize};

use super::{Error, Usage};
use crate::{metrics, store::Store};

/// What one caller used of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Calls answered.
    pub requests: u64,
    /// Calls that failed.
    pub failures: u64,
    /// Input tokens.
    pub prompt_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelOutcome {
    model: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelKind {
    model: String,
    kind: String,
}

/// Inference counters (`hanzo_inference_*`).
#[derive(Default)]
struct Metrics {
    requests: Family<ModelOutcome, Counter>,
    tokens: Family<ModelKind, Counter>,
}

impl Metrics {
    fn register(&self, registry: &metrics::Registry) {
        registry.register(
            "hanzo_inference_requests",
            "Inference calls by model and outcome (ok, error)",
            self.requests.clone(),
        );
        registry.register(
            "hanzo_inference_tokens",
            "Tokens by model and kind (prompt, completion)",
            self.tokens.clone(),
        );
    }
}

/// The usage ledger.
pub struct Meter {
    store: Arc<Store>,
    totals: Mutex<BTreeMap<(Address, String), Counts>>,
    metrics: Metrics,
}

impl Meter {
    /// Reads the stored totals; registers the counters into `registry`.
    pub fn open(store: Arc<Store>, registry: &metrics::Registry) -> Result<Self, Error> {
        let mut totals = BTreeMap::new();
        let records = store.usage().map_err(|e| Error::Invalid(e.to_string()))?;
        for (key, value) in records {
            let (Some((addr, model)), Ok(counts)) = (
                key.split_at_checked(20),
                postcard::from_bytes::<Counts>(&value),
            ) else {
                tracing::warn!(target: super::TARGET, "skipping an unreadable usage record");
                continue;
            };
            totals.insert(
                (
                    Address::from_slice(addr),
                    String::from_utf8_lossy(model).into_owned(),
                ),
                counts,
            );
        }
        Ok(Self {
            store,
            totals: Mutex::new(totals),
            metrics: {
                let m = Metrics::default();
                m.register(registry);
                m
            },
        })
    }

    /// Starts `model`'s counters at zero, so they are exported before its first call.
    pub fn init(&self, model: &str) {
        for outcome in ["ok", "error"] {
            self.metrics
                .requests
                .get_or_create(&ModelOutcome {
                    model: model.to_owned(),
                    outcome: outcome.to_owned(),
                })
                .inc_by(0);
        }
        for kind in ["prompt", "completion"] {
            self.metrics
                .tokens
                .get_or_create(&ModelKind {
                    model: model.to_owned(),
                    kind: kind.to_owned(),
                })
                .inc_by(0);
        }
    }

    /// Adds one call of `caller` to `model`.
    pub fn record(&self, caller: Address, model: &str, usage: Usage, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.metrics
            .requests
            .get_or_create(&ModelOutcome {
                model: model.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            self.metrics
                .tokens
                .get_or_create(&ModelKind {
                    model: model.to_owned(),
                    kind: kind.to_owned(),
                })
                .inc_by(n);
        }
        let counts = {
            let mut totals = crate::lock(&self.totals);
            let c = totals.entry((caller, model.to_owned())).or_default();
            if ok {
                c.requests += 1;
            } else {
                c.failures += 1;
            }
            c.prompt_tokens += usage.prompt_tokens;
            c.completion_tokens += usage.completion_tokens;
            *c
        };
        let mut key = caller.to_vec();
        key.extend_from_slice(model.as_bytes());
        // Serializing four integers cannot fail.
        let value = postcard::to_allocvec(&counts).unwrap_or_default();
        if let Err(err) = self.store.put_usage(&key, &value) {
            tracing::warn!(target: super::TARGET, %err, "cannot store usage");
        }
    }

    /// Usage of `address`, or everyone's.
    pub fn usage(&self, address: Option<Address>) -> Vec<(Address, String, Counts)> {
        crate::lock(&self.totals)
            .iter()
            .filter(|((a, _), _)| address.is_none_or(|x| x == *a))
            .map(|((a, m), c)| (*a, m.clone(), *c))
            .collect()
    }
}
