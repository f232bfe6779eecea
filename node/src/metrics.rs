//! The node's one Prometheus registry and the label types modules share.
//!
//! Each module declares its own metrics and registers them here once, when it is
//! constructed, under its own prefix (`hanzo_chain_`, `hanzo_git_`, `hanzo_p2p_`,
//! `hanzo_rpc_`, `hanzo_inference_`, `hanzo_node_`, `eigen_`). Values known only at
//! scrape time (the ACL's age, the chain head) are registered as [`Registry::gauges`]
//! closures. The HTTP `/metrics` route and gRPC's `GetMetrics` only [`Registry::encode`].

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::gauge::ConstGauge,
    registry::{Metric, Registry as Inner},
};

use crate::lock;

/// The label of a metric counted by reason (replication, RPC refusals).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// Why.
    pub reason: String,
}

impl Reason {
    /// The label for `reason`.
    pub fn new(reason: &str) -> Self {
        Self {
            reason: reason.to_owned(),
        }
    }
}

/// One gauge read at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    name: &'static str,
    help: &'static str,
    labels: Vec<(&'static str, String)>,
    value: f64,
}

impl Reading {
    /// Gauge `name` at `value`.
    pub fn new(name: &'static str, help: &'static str, value: f64) -> Self {
        Self {
            name,
            help,
            labels: Vec::new(),
            value,
        }
    }

    /// The same with label `key` = `value`.
    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((key, value.into()));
        self
    }
}

/// The registry every module registers into. Cheap to clone.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<Inner>>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::Registry")
    }
}

impl Registry {
    /// Adds `metric` (a counter, gauge, histogram or family; clones share values).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        lock(&self.0).register(name, help, metric);
    }

    /// Adds gauges whose values `read` computes on every scrape.
    pub fn gauges(&self, read: impl Fn() -> Vec<Reading> + Send + Sync + 'static) {
        lock(&self.0).register_collector(Box::new(Gauges(Box::new(read))));
    }

    /// Every metric, in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &lock(&self.0))?;
        Ok(out)
    }
}

type Read = Box<dyn Fn() -> Vec<Reading> + Send + Sync>;

struct Gauges(Read);

impl std::fmt::Debug for Gauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("metrics::Gauges")
    }
}

impl Collector for Gauges {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for r in (self.0)() {
            let gauge = ConstGauge::new(r.value);
            let mut metric =
                encoder.encode_descriptor(r.name, r.help, None, gauge.metric_type())?;
            if r.labels.is_empty() {
                gauge.encode(metric)?;
            } else {
                gauge.encode(metric.encode_family(&r.labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn registered_and_scraped_metrics_are_encoded_once() {
        let registry = Registry::default();
        let c = Counter::<u64>::default();
        registry.register("hanzo_test_things", "Things", c.clone());
        registry.gauges(|| {
            vec![
                Reading::new("hanzo_test_level", "Level", 2.5),
                Reading::new("hanzo_test_stake", "Stake", 32.0).label("quorum_number", "0"),
            ]
        });
        c.inc_by(3);
        let text = registry.encode().unwrap();
        assert!(text.contains("hanzo_test_things_total 3\n"), "{text}");
        assert!(
            text.contains("# TYPE hanzo_test_level gauge\nhanzo_test_level 2.5\n"),
            "{text}"
        );
        assert!(
            text.contains("hanzo_test_stake{quorum_number=\"0\"} 32.0\n"),
            "{text}"
        );
        assert_eq!(text.matches("hanzo_test_things_total").count(), 1, "{text}");
    }
}
