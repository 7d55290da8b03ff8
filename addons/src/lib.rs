//! The walkthrough's add-ons, reading what mixer's prometheus adapter exports through
//! Prometheus' query API:
//!
//! - [`graph`]: Istio 1.0's servicegraph — `/graph`, `/d3graph`, `/dotgraph`, `/dotviz`,
//!   `/force/forcegraph.html`, with `time_horizon` and `filter_empty` (served by
//!   `keel-servicegraph` on 8088).
//! - [`dashboard`]: the "Istio Mesh Dashboard" the walkthrough opens in Grafana — global
//!   request volume, success rate, 4xx and 5xx rates, and per-service volume, success rate
//!   and latency quantiles — as a page that refreshes itself (served by `keel-dashboard` on
//!   3000 at `/dashboard/db/istio-mesh-dashboard`; Grafana itself is not available here).
//!
//! [`prom`] is the query client; rendering is pure and tested without a Prometheus.

pub mod dashboard;
pub mod graph;
pub mod prom;
pub mod serve;
