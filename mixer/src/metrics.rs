//! Mixer's own metrics (served on the monitoring port, apart from the adapter's metrics).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    /// The google.rpc code name of the answer (`OK`, `PERMISSION_DENIED`, ...).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    pub handler: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    /// Access log entries turned into attribute bags.
    pub reports: Family<ProtocolLabels, Counter>,
    /// Reports dropped because the dispatch queue was full (proxies are never blocked).
    pub reports_dropped: Counter,
    pub instances: Family<HandlerLabels, Counter>,
    /// Instances not built (missing attributes without a default, ...).
    pub instance_errors: Counter,
    /// Lines or records an adapter dropped (queue full, write failed).
    pub adapter_dropped: Family<HandlerLabels, Counter>,
    pub config_problems: Gauge,
    pub rules: Gauge,
    pub streams: Gauge,
    /// Checks answered, by answer.
    pub checks: Family<CheckLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mixer");
        let reports = Family::<ProtocolLabels, Counter>::default();
        registry.register("reports", "Reports received, by protocol", reports.clone());
        let reports_dropped = Counter::default();
        registry.register(
            "reports_dropped",
            "Reports dropped because the dispatch queue was full",
            reports_dropped.clone(),
        );
        let instances = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "dispatched_instances",
            "Instances handed to handlers, by handler",
            instances.clone(),
        );
        let instance_errors = Counter::default();
        registry.register(
            "instance_errors",
            "Instances that could not be built from a report",
            instance_errors.clone(),
        );
        let adapter_dropped = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "adapter_dropped",
            "Entries a handler dropped (queue full or output failing)",
            adapter_dropped.clone(),
        );
        let config_problems = Gauge::default();
        registry.register(
            "config_problems",
            "Parts of the configuration left out (see the log)",
            config_problems.clone(),
        );
        let rules = Gauge::default();
        registry.register("rules", "Rules in effect", rules.clone());
        let streams = Gauge::default();
        registry.register("report_streams", "Open access log streams", streams.clone());
        let checks = Family::<CheckLabels, Counter>::default();
        registry.register(
            "checks",
            "Checks answered, by google.rpc code",
            checks.clone(),
        );
        Metrics {
            checks,
            registry,
            reports,
            reports_dropped,
            instances,
            instance_errors,
            adapter_dropped,
            config_problems,
            rules,
            streams,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
