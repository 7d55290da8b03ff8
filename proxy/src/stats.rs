//! The proxy's own counters, one prometheus-client registry, served on the admin API's
//! `/stats/prometheus` and on the stats listener (15090), with Envoy-like names.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub envoy_cluster_name: String,
    pub envoy_response_code_class: String,
}

#[derive(Debug)]
pub struct Stats {
    pub registry: Registry,
    pub downstream_cx: Counter,
    pub downstream_rq: Counter,
    pub no_route: Counter,
    pub upstream_rq: Counter,
    pub upstream_cx_fail: Counter,
    pub upstream_timeouts: Counter,
    pub upstream_retries: Counter,
    pub listener_errors: Counter,
    pub access_logs_dropped: Counter,
    pub tls_errors: Counter,
    pub no_filter_chain: Counter,
    pub tcp_idle_timeouts: Counter,
    pub upstream_overflow: Counter,
    pub upstream_retry_overflow: Counter,
    pub outlier_ejections: Counter,
    pub ext_authz_ok: Counter,
    pub ext_authz_denied: Counter,
    pub ext_authz_error: Counter,
    pub responses: Family<ResponseLabels, Counter>,
    /// `responses`' counters found so far, by cluster and status class (1xx..5xx): a
    /// response is counted without building its label set.
    response_counters: Mutex<HashMap<String, [Option<Counter>; 5]>>,
}

impl Default for Stats {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("envoy");
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let downstream_cx = counter("http_downstream_cx", "Downstream connections accepted");
        let downstream_rq = counter("http_downstream_rq", "Downstream requests");
        let no_route = counter("http_no_route", "Requests no route matched (404)");
        let upstream_rq = counter(
            "cluster_upstream_rq",
            "Requests sent upstream (tries included)",
        );
        let upstream_cx_fail = counter(
            "cluster_upstream_cx_connect_fail",
            "Upstream connections that failed",
        );
        let upstream_timeouts = counter("cluster_upstream_rq_timeout", "Requests that timed out");
        let upstream_retries = counter("cluster_upstream_rq_retry", "Retries");
        let listener_errors = counter(
            "listener_manager_listener_create_failure",
            "Listeners that could not bind",
        );
        let access_logs_dropped = counter(
            "access_logs_grpc_logs_dropped",
            "Access log entries dropped (buffer full)",
        );
        let tls_errors = counter(
            "listener_ssl_errors",
            "TLS handshakes or certificates that failed",
        );
        let no_filter_chain = counter(
            "listener_no_filter_chain_match",
            "Connections no filter chain matched (closed)",
        );
        let tcp_idle_timeouts = counter(
            "tcp_idle_timeout",
            "TCP proxy connections closed after the idle timeout",
        );
        let upstream_overflow = counter(
            "cluster_upstream_rq_pending_overflow",
            "Requests refused by a circuit breaker (503, x-envoy-overflow)",
        );
        let upstream_retry_overflow = counter(
            "cluster_upstream_rq_retry_overflow",
            "Retries not made because max_retries were in flight",
        );
        let outlier_ejections = counter(
            "cluster_outlier_detection_ejections_enforced",
            "Endpoints ejected by outlier detection",
        );
        let ext_authz_ok = counter(
            "http_ext_authz_ok",
            "Requests the authorization service allowed",
        );
        let ext_authz_denied = counter(
            "http_ext_authz_denied",
            "Requests the authorization service denied",
        );
        let ext_authz_error = counter(
            "http_ext_authz_error",
            "Checks that got no answer (unreachable, timed out)",
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        registry.register(
            "cluster_upstream_rq_xx",
            "Responses by cluster and code class",
            responses.clone(),
        );
        Stats {
            registry,
            downstream_cx,
            downstream_rq,
            no_route,
            upstream_rq,
            upstream_cx_fail,
            upstream_timeouts,
            upstream_retries,
            listener_errors,
            access_logs_dropped,
            tls_errors,
            no_filter_chain,
            tcp_idle_timeouts,
            upstream_overflow,
            upstream_retry_overflow,
            outlier_ejections,
            ext_authz_ok,
            ext_authz_denied,
            ext_authz_error,
            responses,
            response_counters: Mutex::default(),
        }
    }
}

impl Stats {
    pub fn observe_response(&self, status: u16, cluster: &str) {
        let class = usize::from(status / 100);
        let slot = (1..=5).contains(&class).then(|| class - 1);
        let mut found = self
            .response_counters
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slot
            && let Some(Some(counter)) = found.get(cluster).map(|classes| &classes[slot])
        {
            counter.inc();
            return;
        }
        let counter = self
            .responses
            .get_or_create(&ResponseLabels {
                envoy_cluster_name: cluster.to_owned(),
                envoy_response_code_class: format!("{}xx", status / 100),
            })
            .clone();
        counter.inc();
        if let Some(slot) = slot {
            found.entry(cluster.to_owned()).or_default()[slot] = Some(counter);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_registers_and_encodes_with_envoys_names() {
        let s = Stats::default();
        s.upstream_overflow.inc();
        s.observe_response(503, "outbound|9080||ratings.default.svc.cluster.local");
        // Counted again through the counter found the first time.
        s.observe_response(503, "outbound|9080||ratings.default.svc.cluster.local");
        s.observe_response(200, "outbound|9080||ratings.default.svc.cluster.local");
        let text = s.encode();
        assert!(
            text.contains("envoy_cluster_upstream_rq_pending_overflow_total 1"),
            "{text}"
        );
        assert!(text.contains("envoy_cluster_outlier_detection_ejections_enforced_total 0"));
        let count = |class: &str| {
            text.lines()
                .find(|l| l.starts_with("envoy_cluster_upstream_rq_xx_total{") && l.contains(class))
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(count("\"5xx\"").as_deref(), Some("2"), "{text}");
        assert_eq!(count("\"2xx\"").as_deref(), Some("1"), "{text}");
    }
}
