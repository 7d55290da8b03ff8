//! Pilot's Prometheus metrics, named as Istio's pilot named them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// The xDS type URL (Istio labels this `type`; `type` is a Rust keyword).
    pub r#type: String,
}

#[derive(Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub pushes: Family<TypeLabels, Counter>,
    pub rejects: Family<TypeLabels, Counter>,
    pub connected: Gauge,
    /// Seconds to compute one proxy's configuration.
    pub push_time: Histogram,
    /// Seconds from a configuration change reaching pilot to a proxy's new snapshot.
    pub convergence: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pilot");
        let pushes = Family::<TypeLabels, Counter>::default();
        registry.register("xds_pushes", "xDS responses sent, by type", pushes.clone());
        let rejects = Family::<TypeLabels, Counter>::default();
        registry.register(
            "total_xds_rejects",
            "xDS responses proxies rejected (NACK), by type",
            rejects.clone(),
        );
        let connected = Gauge::default();
        registry.register("xds", "Connected proxies", connected.clone());
        let push_time = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "xds_push_time",
            "Seconds to compute one proxy's configuration",
            push_time.clone(),
        );
        let convergence = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "proxy_convergence_time",
            "Seconds from a configuration change to a proxy's new configuration",
            convergence.clone(),
        );
        Metrics {
            registry,
            pushes,
            rejects,
            connected,
            push_time,
            convergence,
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

/// Feeds the ADS server's events into the metrics.
#[derive(Debug, Clone)]
pub struct MetricsObserver(pub std::sync::Arc<Metrics>);

impl keel_xds::server::Observer for MetricsObserver {
    fn connected(&self, node_id: &str) {
        self.0.connected.inc();
        tracing::info!(proxy = node_id, "proxy connected");
    }

    fn disconnected(&self, node_id: &str) {
        self.0.connected.dec();
        tracing::info!(proxy = node_id, "proxy disconnected");
    }

    fn pushed(&self, _node_id: &str, type_url: &str, _resources: usize) {
        self.0
            .pushes
            .get_or_create(&TypeLabels {
                r#type: type_url.to_owned(),
            })
            .inc();
    }

    fn nacked(&self, node_id: &str, type_url: &str, version: &str, reason: &str) {
        self.0
            .rejects
            .get_or_create(&TypeLabels {
                r#type: type_url.to_owned(),
            })
            .inc();
        tracing::warn!(
            proxy = node_id,
            type_url,
            version,
            reason,
            "proxy rejected a push; it keeps its last good configuration"
        );
    }
}
