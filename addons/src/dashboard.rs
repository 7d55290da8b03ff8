//! The Istio Mesh Dashboard: the panels of Istio 1.0's Grafana "Istio Mesh Dashboard" —
//! global request volume, success rate (non-5xx), 4xx and 5xx rates, then per HTTP service
//! its volume, success rate and P50/P90/P99 latency, and per TCP service its bytes — from the
//! same PromQL over mixer's standard metrics, server side, in a page that reloads every 5 s.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::prom::Sample;

/// Every query the dashboard runs, by key. Rates over one minute of destination reports, as
/// the Grafana dashboard had them; the global rates are 0, not "no data", when nothing
/// matched.
pub const QUERIES: &[(&str, &str)] = &[
    (
        "volume",
        r#"sum(rate(istio_requests_total{reporter="destination"}[1m])) or vector(0)"#,
    ),
    (
        "success",
        r#"sum(rate(istio_requests_total{reporter="destination",response_code!~"5.*"}[1m])) / sum(rate(istio_requests_total{reporter="destination"}[1m]))"#,
    ),
    (
        "4xx",
        r#"sum(rate(istio_requests_total{reporter="destination",response_code=~"4.*"}[1m])) or vector(0)"#,
    ),
    (
        "5xx",
        r#"sum(rate(istio_requests_total{reporter="destination",response_code=~"5.*"}[1m])) or vector(0)"#,
    ),
    (
        "svc_volume",
        r#"sum by (destination_service) (rate(istio_requests_total{reporter="destination"}[1m]))"#,
    ),
    (
        "svc_success",
        r#"sum by (destination_service) (rate(istio_requests_total{reporter="destination",response_code!~"5.*"}[1m])) / sum by (destination_service) (rate(istio_requests_total{reporter="destination"}[1m]))"#,
    ),
    (
        "svc_p50",
        r#"histogram_quantile(0.50, sum by (le, destination_service) (rate(istio_request_duration_seconds_bucket{reporter="destination"}[1m])))"#,
    ),
    (
        "svc_p90",
        r#"histogram_quantile(0.90, sum by (le, destination_service) (rate(istio_request_duration_seconds_bucket{reporter="destination"}[1m])))"#,
    ),
    (
        "svc_p99",
        r#"histogram_quantile(0.99, sum by (le, destination_service) (rate(istio_request_duration_seconds_bucket{reporter="destination"}[1m])))"#,
    ),
    (
        "tcp_sent",
        r#"sum by (destination_service) (rate(istio_tcp_sent_bytes_total{reporter="destination"}[1m]))"#,
    ),
    (
        "tcp_received",
        r#"sum by (destination_service) (rate(istio_tcp_received_bytes_total{reporter="destination"}[1m]))"#,
    ),
];

/// One HTTP service's row.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ServiceRow {
    pub volume: Option<f64>,
    pub success: Option<f64>,
    pub p50_seconds: Option<f64>,
    pub p90_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
}

/// One TCP service's row (bytes per second).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TcpRow {
    pub sent: Option<f64>,
    pub received: Option<f64>,
}

/// What the dashboard shows.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Mesh {
    /// Requests per second the destinations saw.
    pub volume: Option<f64>,
    /// Share of responses that were not 5xx (None without traffic).
    pub success: Option<f64>,
    pub rate_4xx: Option<f64>,
    pub rate_5xx: Option<f64>,
    pub http_services: BTreeMap<String, ServiceRow>,
    pub tcp_services: BTreeMap<String, TcpRow>,
    /// Queries that failed, with why (the page shows them).
    pub errors: Vec<String>,
}

/// A per-service query's values.
type ByService = Vec<(String, Option<f64>)>;

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

impl Mesh {
    /// The dashboard from each query's answer (`Err` for the ones that failed).
    pub fn from_results(results: &BTreeMap<&str, Result<Vec<Sample>, String>>) -> Mesh {
        let mut m = Mesh::default();
        let mut ok = |key: &str| -> Vec<Sample> {
            match results.get(key) {
                Some(Ok(s)) => s.clone(),
                Some(Err(e)) => {
                    m.errors.push(format!("{key}: {e}"));
                    Vec::new()
                }
                None => Vec::new(),
            }
        };
        let single = |s: Vec<Sample>| s.first().and_then(|s| finite(s.value));
        let volume = single(ok("volume"));
        let success = single(ok("success"));
        let r4 = single(ok("4xx"));
        let r5 = single(ok("5xx"));
        let mut by_service = |key: &str| -> ByService {
            ok(key)
                .into_iter()
                .map(|s| {
                    (
                        s.labels
                            .get("destination_service")
                            .cloned()
                            .unwrap_or_else(|| "unknown".into()),
                        finite(s.value),
                    )
                })
                .collect()
        };
        let svc: [(&str, ByService); 5] = [
            ("svc_volume", by_service("svc_volume")),
            ("svc_success", by_service("svc_success")),
            ("svc_p50", by_service("svc_p50")),
            ("svc_p90", by_service("svc_p90")),
            ("svc_p99", by_service("svc_p99")),
        ];
        let tcp_sent = by_service("tcp_sent");
        let tcp_received = by_service("tcp_received");
        m.volume = volume;
        // Without traffic there is no rate of anything: 0/0 is "no data", not 0%.
        m.success = success;
        m.rate_4xx = r4;
        m.rate_5xx = r5;
        for (key, rows) in svc {
            for (name, v) in rows {
                let row = m.http_services.entry(name).or_default();
                match key {
                    "svc_volume" => row.volume = v,
                    "svc_success" => row.success = v,
                    "svc_p50" => row.p50_seconds = v,
                    "svc_p90" => row.p90_seconds = v,
                    _ => row.p99_seconds = v,
                }
            }
        }
        for (name, v) in tcp_sent {
            m.tcp_services.entry(name).or_default().sent = v;
        }
        for (name, v) in tcp_received {
            m.tcp_services.entry(name).or_default().received = v;
        }
        m
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn ops(v: Option<f64>) -> String {
    v.map_or_else(|| "N/A".into(), |v| format!("{v:.2} ops"))
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "N/A".into(), |v| format!("{:.2}%", v * 100.0))
}

fn millis(v: Option<f64>) -> String {
    v.map_or_else(|| "N/A".into(), |v| format!("{:.2} ms", v * 1000.0))
}

fn bytes(v: Option<f64>) -> String {
    v.map_or_else(|| "N/A".into(), |v| format!("{v:.1} B/s"))
}

/// The page. Every figure has a `data-panel` (and for rows `data-service`) to find it by.
pub fn page(m: &Mesh) -> String {
    let mut out = String::from(
        r#"<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>Istio Mesh Dashboard</title>
<style>body{font-family:sans-serif;background:#161719;color:#d8d9da;margin:20px}
.panels{display:flex;gap:16px;margin-bottom:24px}.panel{background:#212124;padding:12px 20px;min-width:180px}
.panel h4{margin:0 0 8px;color:#9fa7b3;font-weight:normal}.panel .v{font-size:28px;color:#73bf69}
table{border-collapse:collapse;width:100%;margin-bottom:24px}td,th{padding:6px 10px;border-bottom:1px solid #333;text-align:left}
th{color:#9fa7b3;font-weight:normal}.err{color:#f2495c}</style></head>
<body><h2>Istio Mesh Dashboard</h2>
"#,
    );
    for e in &m.errors {
        let _ = writeln!(out, "<p class=\"err\">{}</p>", esc(e));
    }
    out.push_str("<div class=\"panels\">\n");
    for (id, title, value) in [
        ("volume", "Global Request Volume", ops(m.volume)),
        (
            "success",
            "Global Success Rate (non-5xx responses)",
            percent(m.success),
        ),
        ("4xx", "4xxs", ops(m.rate_4xx)),
        ("5xx", "5xxs", ops(m.rate_5xx)),
    ] {
        let _ = writeln!(
            out,
            "<div class=\"panel\"><h4>{title}</h4><div class=\"v\" data-panel=\"{id}\">{value}</div></div>"
        );
    }
    out.push_str("</div>\n<h3>HTTP services</h3>\n<table><tr><th>Service</th><th>Requests</th><th>Success Rate</th><th>P50 Latency</th><th>P90 Latency</th><th>P99 Latency</th></tr>\n");
    for (name, r) in &m.http_services {
        let s = esc(name);
        let _ = writeln!(
            out,
            "<tr><td>{s}</td><td data-service=\"{s}\" data-panel=\"volume\">{}</td><td data-service=\"{s}\" data-panel=\"success\">{}</td><td data-service=\"{s}\" data-panel=\"p50\">{}</td><td data-service=\"{s}\" data-panel=\"p90\">{}</td><td data-service=\"{s}\" data-panel=\"p99\">{}</td></tr>",
            ops(r.volume),
            percent(r.success),
            millis(r.p50_seconds),
            millis(r.p90_seconds),
            millis(r.p99_seconds)
        );
    }
    out.push_str("</table>\n<h3>TCP services</h3>\n<table><tr><th>Service</th><th>Bytes Sent</th><th>Bytes Received</th></tr>\n");
    for (name, r) in &m.tcp_services {
        let s = esc(name);
        let _ = writeln!(
            out,
            "<tr><td>{s}</td><td data-service=\"{s}\" data-panel=\"sent\">{}</td><td data-service=\"{s}\" data-panel=\"received\">{}</td></tr>",
            bytes(r.sent),
            bytes(r.received)
        );
    }
    out.push_str("</table>\n<p>Data: mixer's prometheus adapter, through Prometheus; <a href=\"/api/mesh\">as JSON</a>.</p>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn one(v: f64) -> Result<Vec<Sample>, String> {
        Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: v,
        }])
    }

    fn per_service(rows: &[(&str, f64)]) -> Result<Vec<Sample>, String> {
        Ok(rows
            .iter()
            .map(|(s, v)| Sample {
                labels: BTreeMap::from([("destination_service".into(), (*s).into())]),
                value: *v,
            })
            .collect())
    }

    #[test]
    fn panels_and_rows_come_from_the_queries() {
        let pp = "productpage.default.svc.cluster.local";
        let results = BTreeMap::from([
            ("volume", one(2.5)),
            ("success", one(0.96)),
            ("4xx", one(0.0)),
            ("5xx", one(0.1)),
            ("svc_volume", per_service(&[(pp, 0.5)])),
            ("svc_success", per_service(&[(pp, 1.0)])),
            ("svc_p50", per_service(&[(pp, 0.012)])),
            ("svc_p90", per_service(&[(pp, 0.02)])),
            ("svc_p99", per_service(&[(pp, f64::NAN)])),
            (
                "tcp_sent",
                Err("prometheus at 127.0.0.1:9090: refused".into()),
            ),
        ]);
        let m = Mesh::from_results(&results);
        assert_eq!(m.volume, Some(2.5));
        assert_eq!(m.http_services[pp].p99_seconds, None, "NaN is no data");
        assert_eq!(m.errors.len(), 1);
        let html = page(&m);
        assert!(html.contains("<div class=\"v\" data-panel=\"volume\">2.50 ops</div>"));
        assert!(html.contains("data-panel=\"success\">96.00%</div>"));
        assert!(html.contains(&format!(
            "<td data-service=\"{pp}\" data-panel=\"p50\">12.00 ms</td>"
        )));
        assert!(html.contains(&format!(
            "<td data-service=\"{pp}\" data-panel=\"p99\">N/A</td>"
        )));
        assert!(html.contains("class=\"err\">tcp_sent: prometheus at 127.0.0.1:9090: refused"));
        // Without any traffic every figure says so.
        let empty = Mesh::from_results(&BTreeMap::from([("success", one(f64::NAN))]));
        assert!(page(&empty).contains("data-panel=\"success\">N/A</div>"));
    }
}
