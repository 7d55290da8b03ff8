//! Galley's Prometheus metrics: one registry for the process, typed label sets.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValidationLabels {
    pub kind: String,
    /// `passed` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub type_url: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    validations: Family<ValidationLabels, Counter>,
    pub pushes: Family<TypeLabels, Counter>,
    pub rejects: Family<TypeLabels, Counter>,
    pub subscribers: Gauge,
    file_errors: Gauge<i64, std::sync::atomic::AtomicI64>,
    pub snapshot_version: Gauge<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("galley");
        let validations = Family::<ValidationLabels, Counter>::default();
        registry.register(
            "validations",
            "Documents validated, by kind and result",
            validations.clone(),
        );
        let pushes = Family::<TypeLabels, Counter>::default();
        registry.register(
            "xds_pushes",
            "Snapshots pushed to subscribers, by type",
            pushes.clone(),
        );
        let rejects = Family::<TypeLabels, Counter>::default();
        registry.register(
            "xds_rejects",
            "Pushes subscribers rejected (NACKed), by type",
            rejects.clone(),
        );
        let subscribers = Gauge::default();
        registry.register(
            "xds_subscribers",
            "Connected subscribers",
            subscribers.clone(),
        );
        let file_errors = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        registry.register(
            "config_file_errors",
            "Files in the configuration directory that are invalid (their last good version stays in force)",
            file_errors.clone(),
        );
        let snapshot_version = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "snapshot_version",
            "Version of the published configuration",
            snapshot_version.clone(),
        );
        Metrics {
            registry,
            validations,
            pushes,
            rejects,
            subscribers,
            file_errors,
            snapshot_version,
        }
    }

    pub fn validation(&self, kind: &str, passed: bool) {
        self.validations
            .get_or_create(&ValidationLabels {
                kind: kind.to_owned(),
                result: if passed { "passed" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    pub fn set_file_errors(&self, n: usize) {
        self.file_errors.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
